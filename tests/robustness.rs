//! Hostile and clumsy peers: garbage, truncated frames, split and coalesced
//! writes. After each, well-behaved clients must still be served.

mod common;

use std::thread;
use std::time::Duration;

use common::frame::header;
use common::tcp::assert_error;
use common::{code, kind, random_bytes, Event, Frame, Gateway, TcpClient, NIL};
use uuid::Uuid;

const GARBAGE_BYTES: usize = 4096;
const GARBAGE_CONNECTIONS: usize = 200;

/// Two fresh clients trade a DATA frame each way.
fn assert_gateway_serves(gw: &Gateway, id: u64) {
    let a = Uuid::new_v4();
    let b = Uuid::new_v4();
    let mut client_a = TcpClient::hello(gw.tcp_addr(), a);
    let mut client_b = TcpClient::hello(gw.tcp_addr(), b);
    client_a.data(b, id, b"ping");
    assert_eq!(
        client_b.recv(),
        Frame::new(kind::DATA, a, b, id, b"ping".to_vec())
    );
    client_b.data(a, id + 1, b"pong");
    assert_eq!(
        client_a.recv(),
        Frame::new(kind::DATA, b, a, id + 1, b"pong".to_vec())
    );
}

/// Random bytes whose first byte is not version 1, so the very first header
/// is already invalid.
fn garbage(len: usize) -> Vec<u8> {
    let mut bytes = random_bytes(len);
    if bytes[0] == 1 {
        bytes[0] = 0xee;
    }
    bytes
}

#[test]
fn garbage_bytes_get_bad_frame_or_a_close_and_others_keep_working() {
    let gw = Gateway::start("");
    let a = Uuid::new_v4();
    let b = Uuid::new_v4();
    let mut client_a = TcpClient::hello(gw.tcp_addr(), a);
    let mut client_b = TcpClient::hello(gw.tcp_addr(), b);

    let bytes = garbage(GARBAGE_BYTES);
    let header_id = u64::from_be_bytes(bytes[40..48].try_into().expect("8 bytes"));
    let mut vandal = TcpClient::connect(gw.tcp_addr());
    // The gateway may close before reading it all; a failed write is fine.
    let _ = vandal.write_bytes(&bytes);
    match vandal.poll(Duration::from_secs(5)) {
        Event::Frame(frame) => {
            assert_error(&frame, code::BAD_FRAME, header_id);
            vandal.expect_closed();
        }
        Event::Closed => {}
        Event::Silent => panic!("garbage neither answered nor closed within 5 s"),
    }

    client_a.data(b, 1, b"still here");
    assert_eq!(
        client_b.recv(),
        Frame::new(kind::DATA, a, b, 1, b"still here".to_vec())
    );
    assert_gateway_serves(&gw, 10);
}

#[test]
fn disconnect_in_the_middle_of_a_frame_leaves_the_gateway_serving() {
    let gw = Gateway::start("");
    let receiver_addr = Uuid::new_v4();
    let mut receiver = TcpClient::hello(gw.tcp_addr(), receiver_addr);

    // Half a payload, then gone.
    let quitter_addr = Uuid::new_v4();
    let mut quitter = TcpClient::hello(gw.tcp_addr(), quitter_addr);
    let mut bytes = header(1, kind::DATA, 0, 1000, quitter_addr, receiver_addr, 5).to_vec();
    bytes.extend_from_slice(&[0xab; 500]);
    quitter.send_bytes(&bytes);
    drop(quitter);

    // Half a header, then gone.
    let mut quitter = TcpClient::connect(gw.tcp_addr());
    quitter.send_bytes(&header(1, kind::HELLO, 0, 0, Uuid::new_v4(), NIL, 6)[..20]);
    drop(quitter);

    // The receiver never sees the partial frame: its next frame is this one.
    let sender_addr = Uuid::new_v4();
    let mut sender = TcpClient::hello(gw.tcp_addr(), sender_addr);
    sender.data(receiver_addr, 7, b"whole");
    assert_eq!(
        receiver.recv(),
        Frame::new(kind::DATA, sender_addr, receiver_addr, 7, b"whole".to_vec())
    );

    // The quitter's address can register again.
    let mut again = TcpClient::hello(gw.tcp_addr(), quitter_addr);
    again.heartbeat(8);
    assert_gateway_serves(&gw, 20);
}

#[test]
fn two_hundred_garbage_connections_then_a_normal_exchange() {
    let gw = Gateway::start("");
    for round in 0..GARBAGE_CONNECTIONS {
        let mut vandal = TcpClient::connect(gw.tcp_addr());
        match round % 4 {
            // Connect and leave at once.
            0 => {}
            // Random bytes of random length.
            1 => {
                let len = 1 + usize::from(random_bytes(1)[0]) * 2;
                let _ = vandal.write_bytes(&garbage(len));
            }
            // A valid header promising a payload that never comes.
            2 => {
                let _ = vandal.write_bytes(&header(1, kind::HELLO, 0, 64, Uuid::new_v4(), NIL, 1));
            }
            // A HELLO, then garbage.
            _ => {
                let me = Uuid::new_v4();
                let mut bytes = Frame::new(kind::HELLO, me, NIL, 2, Vec::new()).encode();
                bytes.extend_from_slice(&garbage(100));
                let _ = vandal.write_bytes(&bytes);
            }
        }
        drop(vandal);
    }
    assert_gateway_serves(&gw, 30);
}

#[test]
fn huge_declared_length_gets_too_large_and_close() {
    let gw = Gateway::start("");
    let me = Uuid::new_v4();

    let mut before_hello = TcpClient::connect(gw.tcp_addr());
    before_hello.send_bytes(&header(1, kind::DATA, 0, u32::MAX, me, NIL, 40));
    before_hello.expect_error_then_close(code::TOO_LARGE, 40);

    let mut after_hello = TcpClient::hello(gw.tcp_addr(), me);
    after_hello.send_bytes(&header(1, kind::DATA, 0, u32::MAX, me, Uuid::new_v4(), 41));
    after_hello.expect_error_then_close(code::TOO_LARGE, 41);

    // One byte above the default 1 MiB.
    let mut just_over = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());
    let just_over_addr = just_over.addr;
    just_over.send_bytes(&header(1, kind::DATA, 0, 1_048_577, just_over_addr, me, 42));
    just_over.expect_error_then_close(code::TOO_LARGE, 42);

    assert_gateway_serves(&gw, 50);
}

#[test]
fn frames_split_into_small_writes_are_reassembled() {
    let gw = Gateway::start("");
    let me = Uuid::new_v4();
    let peer = Uuid::new_v4();
    let mut receiver = TcpClient::hello(gw.tcp_addr(), peer);
    let mut client = TcpClient::connect(gw.tcp_addr());

    for byte in Frame::new(kind::HELLO, me, NIL, 60, Vec::new()).encode() {
        client.send_bytes(&[byte]);
        thread::sleep(Duration::from_millis(1));
    }
    let welcome = client.recv();
    assert_eq!(
        (welcome.kind, welcome.dst, welcome.id),
        (kind::WELCOME, me, 60)
    );
    client.addr = me;

    let payload: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
    let bytes = Frame::new(kind::DATA, me, peer, 61, payload.clone()).encode();
    for piece in [
        &bytes[..3],
        &bytes[3..47],
        &bytes[47..49],
        &bytes[49..200],
        &bytes[200..],
    ] {
        client.send_bytes(piece);
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        receiver.recv(),
        Frame::new(kind::DATA, me, peer, 61, payload)
    );
}

#[test]
fn several_frames_in_one_write_are_all_answered_in_order() {
    let gw = Gateway::start("");
    let me = Uuid::new_v4();
    let mut client = TcpClient::connect(gw.tcp_addr());
    let mut bytes = Frame::new(kind::HELLO, me, NIL, 70, Vec::new()).encode();
    bytes.extend(Frame::new(kind::HEARTBEAT, me, NIL, 71, Vec::new()).encode());
    bytes.extend(Frame::new(kind::TIME_REQ, me, NIL, 72, 9u64.to_be_bytes().to_vec()).encode());
    bytes.extend(Frame::new(0x55, me, NIL, 73, Vec::new()).encode());
    bytes.extend(Frame::new(kind::HEARTBEAT, me, NIL, 74, Vec::new()).encode());
    client.send_bytes(&bytes);

    // Frames of different kinds may be answered by different parts of the
    // gateway, so only the set of answers is fixed, not their order.
    client.addr = me;
    let mut answers: Vec<Frame> = (0..5).map(|_| client.recv()).collect();
    answers.sort_by_key(|frame| frame.id);
    assert_eq!(
        (answers[0].kind, answers[0].dst, answers[0].id),
        (kind::WELCOME, me, 70)
    );
    assert_eq!((answers[1].kind, answers[1].id), (kind::HEARTBEAT, 71));
    assert_eq!((answers[2].kind, answers[2].id), (kind::TIME_RESP, 72));
    assert_eq!(answers[2].time_resp().t0, 9);
    assert_error(&answers[3], code::UNKNOWN_KIND, 73);
    assert_eq!((answers[4].kind, answers[4].id), (kind::HEARTBEAT, 74));
}
