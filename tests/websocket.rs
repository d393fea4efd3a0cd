//! The WebSocket endpoint: path, binary frames, the JSON mapping, and
//! WebSocket-specific validation and liveness.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::frame::header;
use common::json::{b64_decode, b64_encode, get_bool, get_str, get_u64, get_uuid, uuid_str};
use common::{
    assert_time_between, code, kind, now_us, Frame, Gateway, TcpClient, WsClient, WsEvent, NIL,
};
use serde_json::{json, Value};
use uuid::Uuid;

/// Largest integer JavaScript represents exactly; ids stay below it.
const JS_SAFE_ID: u64 = (1 << 53) - 1;

/// Sends a raw HTTP upgrade request for `path` and returns the status line.
fn upgrade_status_line(gw: &Gateway, path: &str) -> String {
    let mut stream =
        TcpStream::connect_timeout(&gw.ws_addr(), Duration::from_secs(5)).expect("connect ws port");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .expect("write timeout");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        gw.ws_addr()
    );
    stream.write_all(request.as_bytes()).expect("send request");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut response = Vec::new();
    let mut chunk = [0u8; 1024];
    while !response.windows(2).any(|w| w == b"\r\n") {
        assert!(Instant::now() < deadline, "no status line for {path}");
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("read HTTP response for {path}: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&response).to_string();
    text.lines().next().unwrap_or_default().to_string()
}

#[test]
fn paths_other_than_ws_get_http_404() {
    let gw = Gateway::start("");
    for path in ["/", "/other", "/wsx", "/ws/extra"] {
        let status = upgrade_status_line(&gw, path);
        assert!(
            status.starts_with("HTTP/1.1 404"),
            "path {path} answered {status:?}"
        );
    }
    assert!(upgrade_status_line(&gw, "/ws").starts_with("HTTP/1.1 101"));
}

#[test]
fn binary_hello_gets_binary_welcome() {
    let gw = Gateway::start(
        "[limits]\nmax_payload_bytes = 65536\n[timeouts]\nheartbeat_timeout_ms = 45000",
    );
    let me = Uuid::new_v4();
    let mut client = WsClient::connect(gw.ws_addr());
    let before = now_us();
    client.send_frame(&Frame::new(kind::HELLO, me, NIL, 0x0a0b_0c0d, Vec::new()));
    let welcome = client.recv_frame();
    let after = now_us();
    assert_eq!(welcome.kind, kind::WELCOME);
    assert_eq!(welcome.src, NIL);
    assert_eq!(welcome.dst, me);
    assert_eq!(welcome.id, 0x0a0b_0c0d);
    let fields = welcome.welcome();
    assert_eq!(fields.heartbeat_timeout_ms, 45_000);
    assert_eq!(fields.max_payload, 65_536);
    assert_time_between("server_time_us", fields.server_time_us, before, after);
}

#[test]
fn json_hello_gets_json_welcome_with_named_fields() {
    let gw = Gateway::start(
        "[limits]\nmax_payload_bytes = 65536\n[timeouts]\nheartbeat_timeout_ms = 45000",
    );
    let me = Uuid::new_v4();
    let mut client = WsClient::connect(gw.ws_addr());
    let before = now_us();
    // Input UUIDs may be uppercase; output ones are lowercase.
    let src = uuid_str(me).to_uppercase();
    client.send_json(&json!({"kind": "hello", "src": src, "id": JS_SAFE_ID}));
    let welcome = client.recv_json();
    let after = now_us();
    assert_eq!(get_str(&welcome, "kind"), "welcome");
    assert_eq!(
        get_str(&welcome, "src"),
        "00000000-0000-0000-0000-000000000000"
    );
    assert_eq!(get_str(&welcome, "dst"), uuid_str(me));
    assert_eq!(get_u64(&welcome, "id"), JS_SAFE_ID);
    assert_eq!(get_u64(&welcome, "heartbeat_timeout_ms"), 45_000);
    assert_eq!(get_u64(&welcome, "max_payload"), 65_536);
    assert_time_between(
        "server_time_us",
        get_u64(&welcome, "server_time_us"),
        before,
        after,
    );
}

/// The payload of a JSON data frame must be in `payload` as text, and not
/// also in `payload_b64`.
fn text_payload(value: &Value) -> &str {
    assert!(
        value.get("payload_b64").is_none_or(Value::is_null),
        "UTF-8 payload also sent as payload_b64: {value}"
    );
    get_str(value, "payload")
}

/// The payload of a JSON data frame must be in `payload_b64`, and not in
/// `payload`.
fn b64_payload(value: &Value) -> Vec<u8> {
    assert!(
        value.get("payload").is_none_or(Value::is_null),
        "non-UTF-8 payload sent as payload: {value}"
    );
    b64_decode(get_str(value, "payload_b64"))
}

#[test]
fn data_from_tcp_reaches_a_json_client_as_text_or_base64() {
    let gw = Gateway::start("");
    let tcp_addr = Uuid::new_v4();
    let json_addr = Uuid::new_v4();
    let mut json_client = WsClient::hello_json(gw.ws_addr(), json_addr);
    let mut tcp = TcpClient::hello(gw.tcp_addr(), tcp_addr);

    tcp.data(json_addr, 7, "héllo wörld ✓".as_bytes());
    let data = json_client.expect_json("data", 7);
    assert_eq!(get_uuid(&data, "src"), tcp_addr);
    assert_eq!(get_uuid(&data, "dst"), json_addr);
    assert_eq!(text_payload(&data), "héllo wörld ✓");

    let invalid_utf8 = [0xff, 0xfe, 0x00, 0x80, b'a'];
    tcp.data(json_addr, 8, &invalid_utf8);
    let data = json_client.expect_json("data", 8);
    assert_eq!(get_uuid(&data, "src"), tcp_addr);
    assert_eq!(get_str(&data, "payload_b64"), b64_encode(&invalid_utf8));
    assert_eq!(b64_payload(&data), invalid_utf8);
}

#[test]
fn data_from_a_json_client_reaches_tcp_unchanged() {
    let gw = Gateway::start("");
    let tcp_addr = Uuid::new_v4();
    let json_addr = Uuid::new_v4();
    let mut tcp = TcpClient::hello(gw.tcp_addr(), tcp_addr);
    let mut json_client = WsClient::hello_json(gw.ws_addr(), json_addr);
    let dst = uuid_str(tcp_addr);

    let bytes = [0x00, 0x01, 0x02, 0xff, 0xfe, 0x80];
    // `src` omitted: it defaults to the registered address.
    json_client.send_json(
        &json!({"kind": "data", "dst": dst, "id": 9, "payload_b64": b64_encode(&bytes)}),
    );
    let frame = tcp.recv();
    assert_eq!(
        frame,
        Frame::new(kind::DATA, json_addr, tcp_addr, 9, bytes.to_vec())
    );

    json_client.send_json(&json!({"kind": "data", "src": uuid_str(json_addr), "dst": dst, "id": JS_SAFE_ID, "payload": "text ✓"}));
    let frame = tcp.recv();
    assert_eq!(
        frame,
        Frame::new(
            kind::DATA,
            json_addr,
            tcp_addr,
            JS_SAFE_ID,
            "text ✓".as_bytes().to_vec()
        )
    );

    // No payload, or null, is an empty payload; a missing id is 0.
    json_client.send_json(&json!({"kind": "data", "dst": dst, "id": 10}));
    assert_eq!(
        tcp.recv(),
        Frame::new(kind::DATA, json_addr, tcp_addr, 10, Vec::new())
    );
    json_client.send_json(&json!({"kind": "data", "dst": dst, "id": 11, "payload": null}));
    assert_eq!(
        tcp.recv(),
        Frame::new(kind::DATA, json_addr, tcp_addr, 11, Vec::new())
    );
    json_client.send_json(&json!({"kind": "data", "dst": dst, "payload": "no id"}));
    assert_eq!(
        tcp.recv(),
        Frame::new(kind::DATA, json_addr, tcp_addr, 0, b"no id".to_vec())
    );
}

#[test]
fn data_between_json_and_binary_websocket_clients() {
    let gw = Gateway::start("");
    let json_addr = Uuid::new_v4();
    let binary_addr = Uuid::new_v4();
    let mut json_client = WsClient::hello_json(gw.ws_addr(), json_addr);
    let mut binary_client = WsClient::hello_binary(gw.ws_addr(), binary_addr);

    json_client.send_json(
        &json!({"kind": "data", "dst": uuid_str(binary_addr), "id": 12, "payload": "to binary"}),
    );
    let frame = binary_client.recv_frame();
    assert_eq!(
        frame,
        Frame::new(
            kind::DATA,
            json_addr,
            binary_addr,
            12,
            b"to binary".to_vec()
        )
    );

    binary_client.send_frame(&Frame::new(
        kind::DATA,
        binary_addr,
        json_addr,
        13,
        b"to json".to_vec(),
    ));
    let data = json_client.expect_json("data", 13);
    assert_eq!(get_uuid(&data, "src"), binary_addr);
    assert_eq!(text_payload(&data), "to json");
}

#[test]
fn time_req_in_json_gets_time_resp_in_json() {
    let gw = Gateway::start("");
    let mut client = WsClient::hello_json(gw.ws_addr(), Uuid::new_v4());
    let before = now_us();
    client.send_json(&json!({"kind": "time_req", "id": 3, "t0": 12_345}));
    let reply = client.expect_json("time_resp", 3);
    let after = now_us();
    assert_eq!(get_u64(&reply, "t0"), 12_345);
    let (t1, t2) = (get_u64(&reply, "t1"), get_u64(&reply, "t2"));
    assert!(t1 <= t2, "t1 {t1} > t2 {t2}");
    assert_time_between("t1", t1, before, after);
    assert_time_between("t2", t2, before, after);
}

#[test]
fn subscribe_in_json_gets_presence_with_boolean_online() {
    let gw = Gateway::start("");
    let watched = Uuid::new_v4();
    let mut watcher = WsClient::hello_json(gw.ws_addr(), Uuid::new_v4());
    watcher.send_json(
        &json!({"kind": "subscribe", "id": 4, "address": uuid_str(watched).to_uppercase()}),
    );
    let snapshot = watcher.expect_json("presence", 4);
    assert_eq!(get_uuid(&snapshot, "address"), watched);
    assert!(!get_bool(&snapshot, "online"));
    assert_eq!(get_u64(&snapshot, "at_us"), 0);

    let before = now_us();
    let connection = TcpClient::hello(gw.tcp_addr(), watched);
    let online = watcher.expect_json("presence", 0);
    assert_eq!(get_uuid(&online, "address"), watched);
    assert!(get_bool(&online, "online"));
    assert_time_between("at_us", get_u64(&online, "at_us"), before, now_us());

    drop(connection);
    let offline = watcher.expect_json("presence", 0);
    assert!(!get_bool(&offline, "online"));

    // Unsubscribed: the next connect is not pushed.
    watcher.send_json(&json!({"kind": "unsubscribe", "id": 5, "address": uuid_str(watched)}));
    watcher.send_json(&json!({"kind": "heartbeat", "id": 6}));
    watcher.expect_json("heartbeat", 6);
    let _again = TcpClient::hello(gw.tcp_addr(), watched);
    watcher.expect_silence(Duration::from_millis(300));
}

#[test]
fn invalid_json_gets_bad_frame_with_id_zero_and_close() {
    let gw = Gateway::start("");
    let mut before_hello = WsClient::connect(gw.ws_addr());
    before_hello.send_text("{\"kind\": \"hello\", \"src\":");
    before_hello.expect_json_error(code::BAD_FRAME, 0);
    before_hello.expect_closed();

    let mut after_hello = WsClient::hello_json(gw.ws_addr(), Uuid::new_v4());
    after_hello.send_text("not json at all");
    after_hello.expect_json_error(code::BAD_FRAME, 0);
    after_hello.expect_closed();
}

#[test]
fn json_that_does_not_map_to_a_frame_gets_bad_frame_and_close() {
    let gw = Gateway::start("");
    let cases: [(bool, Value, u64); 6] = [
        // (register first, message, id the error must carry)
        (false, json!([1, 2, 3]), 0),
        (false, json!({"id": 1}), 1),
        (false, json!({"kind": "hello", "id": 9}), 9),
        (true, json!({"kind": "heartbeat", "id": "ten"}), 0),
        (
            true,
            json!({"kind": "subscribe", "id": 8, "address": "not-a-uuid"}),
            8,
        ),
        (true, json!({"kind": "time_req", "id": 12}), 12),
    ];
    for (register, message, id) in cases {
        let mut client = WsClient::connect(gw.ws_addr());
        if register {
            client.register_json(Uuid::new_v4());
        }
        client.send_json(&message);
        client.expect_json_error(code::BAD_FRAME, id);
        client.expect_closed();
    }
}

#[test]
fn both_payload_and_payload_b64_is_bad_frame() {
    let gw = Gateway::start("");
    let peer = Uuid::new_v4();
    let _peer = TcpClient::hello(gw.tcp_addr(), peer);
    let mut client = WsClient::hello_json(gw.ws_addr(), Uuid::new_v4());
    client.send_json(&json!({"kind": "data", "dst": uuid_str(peer), "id": 6, "payload": "a", "payload_b64": "YQ=="}));
    client.expect_json_error(code::BAD_FRAME, 6);
    client.expect_closed();
}

#[test]
fn unknown_kind_name_after_hello_gets_unknown_kind_and_connection_stays() {
    let gw = Gateway::start("");
    let mut client = WsClient::hello_json(gw.ws_addr(), Uuid::new_v4());
    client.send_json(&json!({"kind": "frobnicate", "id": 7}));
    client.expect_json_error(code::UNKNOWN_KIND, 7);
    // A name from the table that only the gateway may send.
    client.send_json(&json!({"kind": "welcome", "id": 8}));
    client.expect_json_error(code::UNKNOWN_KIND, 8);
    client.send_json(&json!({"kind": "heartbeat", "id": 9}));
    client.expect_json("heartbeat", 9);
}

#[test]
fn answers_before_hello_take_the_form_of_the_message() {
    let gw = Gateway::start("");
    let me = Uuid::new_v4();
    let mut client = WsClient::connect(gw.ws_addr());
    client.send_json(&json!({"kind": "heartbeat", "src": uuid_str(me), "id": 1}));
    client.expect_json_error(code::NOT_REGISTERED, 1);
    client.send_frame(&Frame::new(kind::HEARTBEAT, me, NIL, 2, Vec::new()));
    client.expect_binary_error(code::NOT_REGISTERED, 2);
    client.register_json(me);
}

#[test]
fn after_hello_every_frame_comes_in_the_form_of_the_hello() {
    let gw = Gateway::start("");
    let json_addr = Uuid::new_v4();
    let binary_addr = Uuid::new_v4();
    let mut json_client = WsClient::hello_json(gw.ws_addr(), json_addr);
    let mut binary_client = WsClient::hello_binary(gw.ws_addr(), binary_addr);

    // A client may send either form after HELLO; answers keep the HELLO's.
    json_client.send_frame(&Frame::new(kind::HEARTBEAT, json_addr, NIL, 5, Vec::new()));
    json_client.expect_json("heartbeat", 5);
    binary_client.send_json(&json!({"kind": "heartbeat", "id": 6}));
    let reply = binary_client.recv_frame();
    assert_eq!((reply.kind, reply.id), (kind::HEARTBEAT, 6));
}

#[test]
fn short_binary_message_gets_bad_frame_with_id_zero_and_close() {
    let gw = Gateway::start("");
    let short = [1u8, kind::HEARTBEAT, 0, 0, 0, 0, 0, 0, 9, 9];

    let mut before_hello = WsClient::connect(gw.ws_addr());
    before_hello.send_binary(&short);
    before_hello.expect_binary_error(code::BAD_FRAME, 0);
    before_hello.expect_closed();

    let mut binary_client = WsClient::hello_binary(gw.ws_addr(), Uuid::new_v4());
    binary_client.send_binary(&short);
    binary_client.expect_binary_error(code::BAD_FRAME, 0);
    binary_client.expect_closed();

    let mut json_client = WsClient::hello_json(gw.ws_addr(), Uuid::new_v4());
    json_client.send_binary(&short);
    json_client.expect_json_error(code::BAD_FRAME, 0);
    json_client.expect_closed();
}

#[test]
fn binary_message_whose_length_is_not_48_plus_len_gets_bad_frame() {
    let gw = Gateway::start("");
    let me = Uuid::new_v4();

    // Header says 5 payload bytes, the message carries 3.
    let mut client = WsClient::connect(gw.ws_addr());
    let mut message = header(1, kind::HELLO, 0, 5, me, NIL, 21).to_vec();
    message.extend_from_slice(b"abc");
    client.send_binary(&message);
    client.expect_binary_error(code::BAD_FRAME, 21);
    client.expect_closed();

    // Header says 0, the message carries 4 more bytes.
    let mut client = WsClient::hello_binary(gw.ws_addr(), me);
    let mut message = header(1, kind::HEARTBEAT, 0, 0, me, NIL, 22).to_vec();
    message.extend_from_slice(b"tail");
    client.send_binary(&message);
    client.expect_binary_error(code::BAD_FRAME, 22);
    client.expect_closed();
}

#[test]
fn ping_and_pong_count_as_liveness() {
    let gw = Gateway::start("[timeouts]\nheartbeat_timeout_ms = 600\ntimer_tick_ms = 20");
    let mut pinger = WsClient::hello_json(gw.ws_addr(), Uuid::new_v4());
    let mut ponger = WsClient::hello_json(gw.ws_addr(), Uuid::new_v4());
    // A silent control proves the timeout is live in this gateway.
    let mut control = WsClient::hello_json(gw.ws_addr(), Uuid::new_v4());

    let started = Instant::now();
    let mut pongs = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        pinger.ping(b"alive");
        ponger.pong(b"alive");
        let round = Instant::now();
        match pinger.poll(Duration::from_millis(150)) {
            WsEvent::Pong(_) => pongs += 1,
            WsEvent::Silent => {}
            event => panic!("pinger got {event:?}"),
        }
        match ponger.poll(Duration::from_millis(1)) {
            WsEvent::Silent => {}
            event => panic!("ponger got {event:?}"),
        }
        thread::sleep(Duration::from_millis(200).saturating_sub(round.elapsed()));
    }
    assert!(pongs > 0, "the gateway answered no ping");

    pinger.send_json(&json!({"kind": "heartbeat", "id": 1}));
    pinger.expect_json("heartbeat", 1);
    ponger.send_json(&json!({"kind": "heartbeat", "id": 2}));
    ponger.expect_json("heartbeat", 2);
    control.expect_json_error(code::TIMEOUT, 0);
    control.expect_closed();
}

#[test]
fn silent_websocket_client_times_out_with_a_json_error() {
    let gw = Gateway::start("[timeouts]\nheartbeat_timeout_ms = 500\ntimer_tick_ms = 20");
    let me = Uuid::new_v4();
    let mut client = WsClient::hello_json(gw.ws_addr(), me);
    let error = client.expect_json_error(code::TIMEOUT, 0);
    assert_eq!(get_uuid(&error, "dst"), me);
    client.expect_closed();
}

#[test]
fn harness_base64_matches_rfc4648_vectors() {
    let vectors = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];
    for (plain, encoded) in vectors {
        assert_eq!(b64_encode(plain.as_bytes()), encoded);
        assert_eq!(b64_decode(encoded), plain.as_bytes());
    }
}
