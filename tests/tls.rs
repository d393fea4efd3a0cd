//! TLS and WSS listeners, with a real TLS client (rustls) and a certificate
//! made at test time: round trips between TLS, WSS and plain clients, a TLS
//! socket handed over between shards, large frames, and bad input on the
//! TLS port.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::tls::TestCert;
use common::{addr_on_shard, code, kind, Event, Frame, Gateway, TcpClient, WsClient, NIL};
use uuid::Uuid;

fn start(cert: &TestCert, extra: &str) -> Gateway {
    let gw = Gateway::start(&format!("{}{extra}", cert.gateway_config()));
    assert_eq!(gw.tls.len(), 1, "a TLS listener in the ready line");
    assert_eq!(gw.wss.len(), 1, "a WSS listener in the ready line");
    gw
}

#[test]
fn tls_client_and_plain_client_exchange_data_both_ways() {
    let cert = TestCert::new();
    let gw = start(&cert, "");
    let secure = Uuid::new_v4();
    let plain = Uuid::new_v4();
    let mut s = TcpClient::hello_tls(gw.tls[0], &cert, secure);
    let mut p = TcpClient::hello(gw.tcp_addr(), plain);
    s.data(plain, 1, b"from tls");
    let got = p.expect_frame(kind::DATA, 1);
    assert_eq!(
        (got.src, got.payload.as_slice()),
        (secure, &b"from tls"[..])
    );
    p.data(secure, 2, b"to tls");
    let got = s.expect_frame(kind::DATA, 2);
    assert_eq!((got.src, got.payload.as_slice()), (plain, &b"to tls"[..]));
    s.heartbeat(3);
    // DATA to nobody is answered over TLS too.
    s.data(Uuid::new_v4(), 4, b"?");
    s.expect_error(code::DST_OFFLINE, 4);
}

#[test]
fn wss_json_client_talks_to_a_tls_client() {
    let cert = TestCert::new();
    let gw = start(&cert, "");
    let page = Uuid::new_v4();
    let device = Uuid::new_v4();
    let mut ws = WsClient::connect_tls(gw.wss[0], &cert);
    ws.register_json(page);
    let mut dev = TcpClient::hello_tls(gw.tls[0], &cert, device);
    ws.send_json(&serde_json::json!({
        "kind": "data", "src": page.to_string(), "dst": device.to_string(), "id": 7,
        "payload": "relay1 on"
    }));
    let got = dev.expect_frame(kind::DATA, 7);
    assert_eq!(got.payload, b"relay1 on");
    dev.data(page, 8, b"done");
    let reply = ws.expect_json("data", 8);
    assert_eq!(reply["payload"], "done");
}

#[test]
fn wss_binary_client_and_plain_websocket_client() {
    let cert = TestCert::new();
    let gw = start(&cert, "");
    let a = Uuid::new_v4();
    let b = Uuid::new_v4();
    let mut secure = WsClient::connect_tls(gw.wss[0], &cert);
    secure.register_binary(a);
    let mut plain = WsClient::hello_binary(gw.ws_addr(), b);
    secure.send_frame(&Frame::new(kind::DATA, a, b, 1, vec![9; 300]));
    assert_eq!(plain.recv_frame().payload, vec![9; 300]);
    plain.send_frame(&Frame::new(kind::DATA, b, a, 2, vec![8; 300]));
    assert_eq!(secure.recv_frame().payload, vec![8; 300]);
}

/// With two shards, a TLS connection whose address another shard owns is
/// handed over with its session; frames keep flowing in order afterwards.
#[test]
fn tls_sessions_survive_the_handover_to_the_owner_shard() {
    let cert = TestCert::new();
    let gw = start(&cert, "[runtime]\nshards = 2");
    let mut clients = Vec::new();
    // Addresses owned by each shard; whichever shard accepts, about half of
    // these connections are handed over.
    for i in 0..8 {
        let addr = addr_on_shard(i % 2, 2);
        clients.push(TcpClient::hello_tls(gw.tls[0], &cert, addr));
    }
    for i in 0..clients.len() {
        let dst = clients[(i + 1) % clients.len()].addr;
        for n in 0..20u64 {
            clients[i].data(dst, 100 * i as u64 + n, &n.to_be_bytes());
        }
    }
    for i in 0..clients.len() {
        let from = (i + clients.len() - 1) % clients.len();
        for n in 0..20u64 {
            let got = clients[i].expect_frame(kind::DATA, 100 * from as u64 + n);
            assert_eq!(got.payload, n.to_be_bytes());
        }
    }
}

/// Frames far larger than a TLS record (16 KiB) in both directions.
#[test]
fn large_frames_cross_tls_intact() {
    let cert = TestCert::new();
    let gw = start(&cert, "");
    let a = Uuid::new_v4();
    let b = Uuid::new_v4();
    let mut ca = TcpClient::hello_tls(gw.tls[0], &cert, a);
    let mut cb = TcpClient::hello_tls(gw.tls[0], &cert, b);
    let big: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    ca.data(b, 1, &big);
    assert_eq!(cb.expect_frame(kind::DATA, 1).payload, big);
    cb.data(a, 2, &big[..300_000]);
    assert_eq!(ca.expect_frame(kind::DATA, 2).payload, &big[..300_000]);
}

/// Plain frames, HTTP and garbage on the TLS port are refused by TLS and the
/// connection closed; TLS clients are served meanwhile.
#[test]
fn non_tls_bytes_on_the_tls_port_are_closed() {
    let cert = TestCert::new();
    let gw = start(&cert, "");
    let hello = Frame::new(kind::HELLO, Uuid::new_v4(), NIL, 1, Vec::new()).encode();
    let garbage: Vec<u8> = (0..3000u32).map(|i| (i * 7919 % 256) as u8).collect();
    let inputs: [&[u8]; 3] = [&hello, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", &garbage];
    for (port, bytes) in [
        (gw.tls[0], inputs[0]),
        (gw.wss[0], inputs[1]),
        (gw.tls[0], inputs[2]),
    ] {
        let mut raw = TcpStream::connect(port).expect("connect");
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        raw.write_all(bytes).expect("write");
        // An alert at most, then end of stream: never a frame, never silence.
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match std::io::Read::read(&mut raw, &mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("no close after non-TLS bytes: {e}"),
            }
        }
        // A TLS alert record (content type 21) or nothing.
        assert!(got.is_empty() || got[0] == 21, "answer {got:?}");
    }
    let mut c = TcpClient::hello_tls(gw.tls[0], &cert, Uuid::new_v4());
    c.heartbeat(5);
}

/// A client that opens TLS and never says HELLO gets `ERROR timeout` inside
/// TLS and is closed.
#[test]
fn tls_connection_without_hello_times_out() {
    let cert = TestCert::new();
    let gw = start(&cert, "[timeouts]\nhandshake_timeout_ms = 500");
    let mut c = TcpClient::connect_tls(gw.tls[0], &cert);
    match c.poll(Duration::from_secs(3)) {
        Event::Frame(f) => common::tcp::assert_error(&f, code::TIMEOUT, 0),
        other => panic!("expected ERROR timeout, got {other:?}"),
    }
    c.expect_closed();
}
