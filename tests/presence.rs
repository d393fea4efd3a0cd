//! SUBSCRIBE / UNSUBSCRIBE and PRESENCE pushes.

mod common;

use std::time::Duration;

use common::tcp::is_kept_code;
use common::{
    addr_on_shard, assert_time_between, code, kind, now_us, Gateway, Presence, TcpClient, NIL,
};
use uuid::Uuid;

/// The next frame must be a pushed PRESENCE (id 0) for `address`.
fn expect_push(watcher: &mut TcpClient, address: Uuid, online: u8) -> Presence {
    let frame = watcher.expect_frame(kind::PRESENCE, 0);
    let presence = frame.presence();
    assert_eq!(presence.address, address, "PRESENCE address");
    assert_eq!(presence.online, online, "PRESENCE online for {address}");
    presence
}

#[test]
fn subscribe_to_a_never_seen_address_answers_offline_at_zero() {
    let gw = Gateway::start("");
    let me = Uuid::new_v4();
    let unknown = Uuid::new_v4();
    let mut watcher = TcpClient::hello(gw.tcp_addr(), me);
    watcher.send(kind::SUBSCRIBE, me, NIL, 21, unknown.as_bytes());
    let frame = watcher.recv();
    assert_eq!(frame.kind, kind::PRESENCE);
    assert_eq!(frame.src, NIL);
    assert_eq!(frame.dst, me);
    assert_eq!(frame.id, 21);
    assert_eq!(frame.payload.len(), 25);
    assert_eq!(
        frame.presence(),
        Presence {
            address: unknown,
            online: 0,
            at_us: 0
        }
    );
}

#[test]
fn subscribe_to_a_connected_address_answers_online() {
    let gw = Gateway::start("");
    let watched = Uuid::new_v4();
    let before = now_us();
    let _online = TcpClient::hello(gw.tcp_addr(), watched);
    let after = now_us();
    let mut watcher = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());
    let presence = watcher.subscribe(watched, 22);
    assert_eq!(presence.online, 1);
    assert!(presence.at_us > 0);
    assert_time_between("at_us", presence.at_us, before, after);
}

#[test]
fn presence_is_pushed_on_connect_and_on_disconnect() {
    let gw = Gateway::start("");
    let watched = Uuid::new_v4();
    let mut watcher = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());
    assert_eq!(watcher.subscribe(watched, 23).online, 0);

    let before = now_us();
    let connection = TcpClient::hello(gw.tcp_addr(), watched);
    let online = expect_push(&mut watcher, watched, 1);
    assert_time_between("online at_us", online.at_us, before, now_us());

    drop(connection);
    let offline = expect_push(&mut watcher, watched, 0);
    assert!(offline.at_us >= online.at_us);
    assert_time_between("offline at_us", offline.at_us, before, now_us());

    // A fresh look reports the same offline moment.
    let mut late = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());
    assert_eq!(late.subscribe(watched, 24), offline);
}

#[test]
fn presence_goes_offline_when_the_watched_client_times_out() {
    let gw = Gateway::start("[timeouts]\nheartbeat_timeout_ms = 500\ntimer_tick_ms = 20");
    let watched = addr_on_shard(1, gw.shards);
    let mut watcher = TcpClient::hello(gw.tcp_addr(), addr_on_shard(0, gw.shards));
    assert_eq!(watcher.subscribe(watched, 25).online, 0);
    let mut silent = TcpClient::hello(gw.tcp_addr(), watched);

    let online = watcher.recv_keepalive(Duration::from_secs(5), Duration::from_millis(150));
    assert_eq!(online.id, 0);
    let online = online.presence();
    assert_eq!((online.address, online.online), (watched, 1));
    let offline = watcher.recv_keepalive(Duration::from_secs(5), Duration::from_millis(150));
    assert_eq!(offline.id, 0);
    let offline = offline.presence();
    assert_eq!((offline.address, offline.online), (watched, 0));

    silent.expect_error_then_close(code::TIMEOUT, 0);
}

#[test]
fn unsubscribe_stops_pushes_and_is_not_answered() {
    let gw = Gateway::start("");
    let dropped = Uuid::new_v4();
    let kept = Uuid::new_v4();
    let mut watcher = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());
    assert_eq!(watcher.subscribe(dropped, 31).online, 0);
    assert_eq!(watcher.subscribe(kept, 32).online, 0);

    watcher.unsubscribe(dropped, 33);
    // Unsubscribing from something never watched is not answered either.
    watcher.unsubscribe(Uuid::new_v4(), 34);
    watcher.heartbeat(35);

    let _dropped_online = TcpClient::hello(gw.tcp_addr(), dropped);
    let _kept_online = TcpClient::hello(gw.tcp_addr(), kept);
    expect_push(&mut watcher, kept, 1);
    watcher.expect_silence(Duration::from_millis(300));
}

#[test]
fn watcher_and_watched_on_different_shards() {
    let gw = Gateway::start("[runtime]\nshards = 3");
    assert_eq!(gw.shards, 3);
    for (watcher_shard, watched_shard) in [(0, 1), (1, 2), (2, 0)] {
        let watched = addr_on_shard(watched_shard, 3);
        let mut watcher = TcpClient::hello(gw.tcp_addr(), addr_on_shard(watcher_shard, 3));
        assert_eq!(watcher.subscribe(watched, 41).online, 0);
        let connection = TcpClient::hello(gw.tcp_addr(), watched);
        let online = expect_push(&mut watcher, watched, 1);
        let mut late = TcpClient::hello(gw.tcp_addr(), addr_on_shard(watcher_shard, 3));
        assert_eq!(late.subscribe(watched, 42), online);
        drop(connection);
        expect_push(&mut watcher, watched, 0);
    }
}

#[test]
fn many_watchers_of_one_address_all_see_it() {
    const WATCHERS: usize = 20;
    let gw = Gateway::start("[runtime]\nshards = 2");
    let watched = Uuid::new_v4();
    let mut watchers: Vec<TcpClient> = (0..WATCHERS)
        .map(|_| TcpClient::hello(gw.tcp_addr(), Uuid::new_v4()))
        .collect();
    for (index, watcher) in watchers.iter_mut().enumerate() {
        assert_eq!(watcher.subscribe(watched, index as u64).online, 0);
    }
    let connection = TcpClient::hello(gw.tcp_addr(), watched);
    for watcher in &mut watchers {
        expect_push(watcher, watched, 1);
    }
    drop(connection);
    for watcher in &mut watchers {
        expect_push(watcher, watched, 0);
    }
}

#[test]
fn subscriptions_beyond_the_limit_get_an_error_and_the_connection_stays() {
    let gw = Gateway::start("[limits]\nmax_subscriptions_per_connection = 4");
    let me = Uuid::new_v4();
    let mut watcher = TcpClient::hello(gw.tcp_addr(), me);
    let targets: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    for (index, target) in targets[..4].iter().enumerate() {
        assert_eq!(watcher.subscribe(*target, 50 + index as u64).online, 0);
    }

    watcher.send(kind::SUBSCRIBE, me, NIL, 55, targets[4].as_bytes());
    let error = watcher.recv();
    assert_eq!(
        error.kind,
        kind::ERROR,
        "fifth SUBSCRIBE answered {error:?}"
    );
    assert_eq!(error.id, 55);
    assert_eq!(error.dst, me);
    let (refused, _) = error.error();
    assert!(
        is_kept_code(refused),
        "code {refused} closes the connection, but the connection must stay usable"
    );
    watcher.heartbeat(56);

    // The refused subscription is not active.
    let _fifth = TcpClient::hello(gw.tcp_addr(), targets[4]);
    let _first = TcpClient::hello(gw.tcp_addr(), targets[0]);
    expect_push(&mut watcher, targets[0], 1);
    watcher.expect_silence(Duration::from_millis(300));

    // Room frees up when one is dropped.
    watcher.unsubscribe(targets[1], 57);
    assert_eq!(watcher.subscribe(targets[4], 58).online, 1);
}
