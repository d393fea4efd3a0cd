//! Token authentication (HELLO) and per-address authorization (DATA,
//! STATE_GET, SUBSCRIBE), with `[auth] mode = "jwt"`.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::json::get_u64;
use common::{addr_on_shard, code, kind, random_id, Gateway, TcpClient, WsClient, NIL};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use uuid::Uuid;

const KEY_A: (&str, &str) = ("key-a", "secret-a-0123456789abcdef0123456789abcdef");
const KEY_B: (&str, &str) = ("key-b", "secret-b-0123456789abcdef0123456789abcdef");
const ALL: &[&str] = &["*"];

/// A gateway configuration fragment with authentication on and `keys`.
fn jwt_config(keys: &[(&str, &str)], extra: &str) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|(kid, secret)| format!("{{ kid = {kid:?}, secret = {secret:?} }}"))
        .collect();
    format!(
        "[auth]\nmode = \"jwt\"\nkeys = [{}]\n{extra}",
        keys.join(", ")
    )
}

fn unix_now() -> i64 {
    let s = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(s.as_secs()).unwrap()
}

/// A token signed with `(kid, secret)`, expiring `ttl_s` from now (negative:
/// already expired).
fn token(key: (&str, &str), sub: Option<Uuid>, allow: &[&str], ttl_s: i64) -> String {
    let mut claims = json!({ "allow": allow, "exp": unix_now() + ttl_s });
    if let Some(sub) = sub {
        claims["sub"] = json!(sub.to_string());
    }
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.0.to_string());
    encode(
        &header,
        &claims,
        &EncodingKey::from_secret(key.1.as_bytes()),
    )
    .expect("encode token")
}

/// A device token of `addr` allowing `allow`, signed with key A for an hour.
fn device_token(addr: Uuid, allow: &[Uuid]) -> String {
    let allow: Vec<String> = allow.iter().map(Uuid::to_string).collect();
    let allow: Vec<&str> = allow.iter().map(String::as_str).collect();
    token(KEY_A, Some(addr), &allow, 3600)
}

/// Connects and registers `addr` with `token`, expecting WELCOME.
fn connect_with(gw: &Gateway, addr: Uuid, token: &str) -> TcpClient {
    let mut client = TcpClient::connect(gw.tcp_addr());
    client.register_with_token(addr, token.as_bytes());
    client
}

/// HELLO as `addr` with `token` must be refused with `auth_failed`
/// addressed to the nil UUID (session rule 1), then closed. Returns the
/// ERROR's message.
fn assert_refused(gw: &Gateway, addr: Uuid, token: &[u8]) -> String {
    let mut client = TcpClient::connect(gw.tcp_addr());
    let id = random_id();
    client.send(kind::HELLO, addr, NIL, id, token);
    let refused = client.expect_error(code::AUTH_FAILED, id);
    assert_eq!(
        refused.dst, NIL,
        "a refused HELLO is answered to the nil UUID"
    );
    client.expect_closed();
    refused.error().1
}

fn send_data(client: &mut TcpClient, dst: Uuid, id: u64, payload: &[u8]) {
    let me = client.addr;
    client.send(kind::DATA, me, dst, id, payload);
}

/// `to` receives the DATA `from` sends it.
fn assert_delivered(from: &mut TcpClient, to: &mut TcpClient, id: u64) {
    send_data(from, to.addr, id, b"allowed");
    let got = to.expect_frame(kind::DATA, id);
    assert_eq!(got.src, from.addr);
    assert_eq!(got.payload, b"allowed");
}

#[test]
fn valid_token_registers_and_reaches_allowed_peer() {
    let gw = Gateway::start(&jwt_config(&[KEY_A], ""));
    let (me, peer) = (Uuid::new_v4(), Uuid::new_v4());
    let mut peer_client = connect_with(&gw, peer, &device_token(peer, &[me]));
    let mut client = connect_with(&gw, me, &device_token(me, &[peer]));
    assert_delivered(&mut client, &mut peer_client, 7);
    assert_delivered(&mut peer_client, &mut client, 8);
}

#[test]
fn expired_token_is_refused() {
    let gw = Gateway::start(&jwt_config(&[KEY_A], ""));
    let me = Uuid::new_v4();
    // Beyond the 60 s leeway.
    assert_refused(&gw, me, token(KEY_A, Some(me), ALL, -600).as_bytes());
}

#[test]
fn token_without_exp_is_refused() {
    let gw = Gateway::start(&jwt_config(&[KEY_A], ""));
    let me = Uuid::new_v4();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(KEY_A.0.into());
    let claims = json!({ "sub": me.to_string(), "allow": ["*"] });
    let t = encode(
        &header,
        &claims,
        &EncodingKey::from_secret(KEY_A.1.as_bytes()),
    )
    .unwrap();
    assert_refused(&gw, me, t.as_bytes());
}

#[test]
fn wrong_key_is_refused() {
    let gw = Gateway::start(&jwt_config(&[KEY_A], ""));
    let me = Uuid::new_v4();
    // Key A's kid, key B's secret.
    let forged = token((KEY_A.0, KEY_B.1), Some(me), ALL, 3600);
    assert_eq!(assert_refused(&gw, me, forged.as_bytes()), "invalid token");
}

/// An unknown kid is told apart from a wrong signature in the gateway's log
/// only: the client hears "invalid token" in both cases.
#[test]
fn unknown_kid_is_refused() {
    let gw = Gateway::start(&jwt_config(&[KEY_A], ""));
    let me = Uuid::new_v4();
    let stranger = token(KEY_B, Some(me), ALL, 3600);
    assert_eq!(
        assert_refused(&gw, me, stranger.as_bytes()),
        "invalid token"
    );
}

#[test]
fn token_for_another_address_is_refused() {
    let gw = Gateway::start(&jwt_config(&[KEY_A], ""));
    let (me, other) = (Uuid::new_v4(), Uuid::new_v4());
    let message = assert_refused(&gw, me, token(KEY_A, Some(other), ALL, 3600).as_bytes());
    assert_eq!(message, "token is for another address");
}

#[test]
fn missing_or_malformed_token_is_refused() {
    let gw = Gateway::start(&jwt_config(&[KEY_A], ""));
    assert_refused(&gw, Uuid::new_v4(), b"");
    assert_refused(&gw, Uuid::new_v4(), b"not.a.token");
    assert_refused(&gw, Uuid::new_v4(), &[0xff, 0xfe]);
}

#[test]
fn forbidden_targets_are_refused_and_the_connection_kept() {
    let gw = Gateway::start(&jwt_config(&[KEY_A], ""));
    let (me, peer, stranger) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut peer_client = connect_with(&gw, peer, &device_token(peer, &[]));
    let mut stranger_client = connect_with(&gw, stranger, &token(KEY_A, Some(stranger), ALL, 60));
    let mut client = connect_with(&gw, me, &device_token(me, &[peer]));

    send_data(&mut client, stranger, 11, b"forbidden");
    client.expect_error(code::FORBIDDEN, 11);
    client.send(kind::SUBSCRIBE, me, NIL, 12, stranger.as_bytes());
    client.expect_error(code::FORBIDDEN, 12);
    client.state_get(stranger, 13);
    client.expect_error(code::FORBIDDEN, 13);
    stranger_client.expect_silence(Duration::from_millis(300));

    // Still open, and what is allowed still works.
    client.heartbeat(14);
    assert_delivered(&mut client, &mut peer_client, 15);
    assert_eq!(client.subscribe(peer, 16).online, 1);
    client.state_get(peer, 17);
    client.expect_error(code::NOT_FOUND, 17);
    // The gateway's own services and the sender's own address need no allow.
    client.send(kind::TIME_REQ, me, NIL, 18, &1u64.to_be_bytes());
    client.expect_frame(kind::TIME_RESP, 18);
    client.put_acked(19, b"mine");
    assert_eq!(client.get_state(me, 20).blob, b"mine");
    // A peer with an empty allow list may reach nobody else.
    send_data(&mut peer_client, me, 21, b"no");
    peer_client.expect_error(code::FORBIDDEN, 21);
}

#[test]
fn star_allows_every_address() {
    let gw = Gateway::start(&jwt_config(&[KEY_A], ""));
    let (me, peer) = (Uuid::new_v4(), Uuid::new_v4());
    let mut peer_client = connect_with(&gw, peer, &device_token(peer, &[]));
    let mut client = connect_with(&gw, me, &token(KEY_A, Some(me), ALL, 3600));
    assert_delivered(&mut client, &mut peer_client, 1);
    let nobody = Uuid::new_v4();
    send_data(&mut client, nobody, 2, b"x");
    client.expect_error(code::DST_OFFLINE, 2);
    assert_eq!(client.subscribe(nobody, 3).online, 0);
    client.state_get(nobody, 4);
    client.expect_error(code::NOT_FOUND, 4);
}

#[test]
fn both_keys_are_accepted_during_rotation() {
    let gw = Gateway::start(&jwt_config(&[KEY_A, KEY_B], ""));
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ca = connect_with(&gw, a, &token(KEY_A, Some(a), ALL, 3600));
    let mut cb = connect_with(&gw, b, &token(KEY_B, Some(b), ALL, 3600));
    assert_delivered(&mut ca, &mut cb, 1);
    assert_delivered(&mut cb, &mut ca, 2);
}

#[test]
fn auth_off_ignores_the_token() {
    let gw = Gateway::start("");
    let (me, peer) = (Uuid::new_v4(), Uuid::new_v4());
    let mut peer_client = connect_with(&gw, peer, "garbage");
    // Even a token that would be refused with auth on, and no allow list.
    let expired = token(KEY_A, Some(Uuid::new_v4()), &[], -600);
    let mut client = connect_with(&gw, me, &expired);
    assert_delivered(&mut client, &mut peer_client, 1);
    client.state_get(Uuid::new_v4(), 2);
    client.expect_error(code::NOT_FOUND, 2);
}

#[test]
fn claims_travel_with_a_handed_over_connection() {
    // With four shards most HELLOs arrive on a shard that does not own the
    // address and are handed over; every one must keep its allow list.
    let shards = 4;
    let gw = Gateway::start(&jwt_config(&[KEY_A], "[runtime]\nshards = 4"));
    let peer = addr_on_shard(0, shards);
    let mut peer_client = connect_with(&gw, peer, &device_token(peer, &[]));
    for round in 0..3u64 {
        for shard in 0..shards {
            let me = addr_on_shard(shard, shards);
            let mut client = connect_with(&gw, me, &device_token(me, &[peer]));
            let id = round * 100 + shard as u64 * 10;
            assert_delivered(&mut client, &mut peer_client, id + 1);
            send_data(&mut client, Uuid::new_v4(), id + 2, b"x");
            client.expect_error(code::FORBIDDEN, id + 2);
        }
    }
}

#[test]
fn web_page_token_without_sub_takes_any_address() {
    let gw = Gateway::start(&jwt_config(&[KEY_A], ""));
    let device = Uuid::new_v4();
    let mut device_client = connect_with(&gw, device, &device_token(device, &[]));
    let page_token = token(KEY_A, None, &[&device.to_string()], 3600);
    let mut page = WsClient::connect(gw.ws_addr());
    let me = Uuid::new_v4();
    page.send_json(
        &json!({"kind": "hello", "src": me.to_string(), "id": 1, "payload": page_token}),
    );
    page.expect_json("welcome", 1);
    page.addr = me;
    page.send_json(&json!({"kind": "data", "src": me.to_string(), "dst": device.to_string(), "id": 2, "payload": "hi"}));
    let got = device_client.expect_frame(kind::DATA, 2);
    assert_eq!(got.src, me);
    let other = Uuid::new_v4().to_string();
    page.send_json(
        &json!({"kind": "data", "src": me.to_string(), "dst": other, "id": 3, "payload": "no"}),
    );
    let err = page.expect_json_error(code::FORBIDDEN, 3);
    assert_eq!(get_u64(&err, "id"), 3);
}

#[test]
fn token_subcommand_mints_a_token_the_gateway_accepts() {
    let keys = jwt_config(&[KEY_A, KEY_B], "");
    let path = std::env::temp_dir().join(format!("uring-gateway-auth-{}.toml", std::process::id()));
    std::fs::write(&path, &keys).expect("write config");
    let gw = Gateway::start(&keys);
    let (me, peer) = (Uuid::new_v4(), Uuid::new_v4());
    let mint = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("token")
            .arg("--config")
            .arg(&path)
            .args(args)
            .output()
            .expect("run gateway token")
    };
    let (me_s, peer_s) = (me.to_string(), peer.to_string());
    let out = mint(&[
        "--sub", &me_s, "--allow", &peer_s, "--ttl", "15m", "--kid", KEY_B.0,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let mut peer_client = connect_with(&gw, peer, &device_token(peer, &[]));
    let mut client = connect_with(&gw, me, &minted);
    assert_delivered(&mut client, &mut peer_client, 1);
    send_data(&mut client, Uuid::new_v4(), 2, b"x");
    client.expect_error(code::FORBIDDEN, 2);
    // Not valid for another address.
    assert_refused(&gw, Uuid::new_v4(), minted.as_bytes());

    for bad in [
        vec!["--ttl", "5x"],
        vec!["--ttl", "1h", "--kid", "nope"],
        vec!["--ttl", "1h", "--allow", "not-a-uuid"],
    ] {
        let out = mint(&bad);
        assert!(!out.status.success(), "{bad:?} succeeded");
    }
    let _ = std::fs::remove_file(&path);
}
