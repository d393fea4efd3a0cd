//! DATA routing between addresses on the same and on different shards,
//! ordering, many clients, takeover and slow consumers.

mod common;

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

use common::tcp::assert_error;
use common::{addr_on_shard, code, kind, Event, Frame, Gateway, Presence, TcpClient, NIL};
use uuid::Uuid;

/// A payload that encodes its own id, so reordering or corruption shows.
fn payload_for(id: u64, len: usize) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.resize(len.max(8), id as u8);
    out.truncate(len);
    out
}

/// The next frame must be exactly this DATA.
fn expect_data(client: &mut TcpClient, src: Uuid, id: u64, payload: &[u8]) {
    let frame = client.recv();
    assert_eq!(
        frame,
        Frame::new(kind::DATA, src, client.addr, id, payload.to_vec()),
        "DATA as received by {}",
        client.addr
    );
}

/// Two clients trade DATA both ways, including an empty payload.
fn exchange(gw: &Gateway, a: Uuid, b: Uuid) {
    let mut client_a = TcpClient::hello(gw.tcp_addr(), a);
    let mut client_b = TcpClient::hello(gw.tcp_addr(), b);
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    client_a.data(b, 42, &all_bytes);
    expect_data(&mut client_b, a, 42, &all_bytes);
    client_b.data(a, u64::MAX, b"reply");
    expect_data(&mut client_a, b, u64::MAX, b"reply");
    client_a.data(b, 0, b"");
    expect_data(&mut client_b, a, 0, b"");
}

#[test]
fn data_between_addresses_on_the_same_shard() {
    let gw = Gateway::start("[runtime]\nshards = 2");
    assert_eq!(gw.shards, 2);
    exchange(&gw, addr_on_shard(0, 2), addr_on_shard(0, 2));
    exchange(&gw, addr_on_shard(1, 2), addr_on_shard(1, 2));
}

#[test]
fn data_between_addresses_on_different_shards() {
    let gw = Gateway::start("[runtime]\nshards = 3");
    assert_eq!(gw.shards, 3);
    for (from, to) in [(0, 1), (1, 2), (2, 0)] {
        exchange(&gw, addr_on_shard(from, 3), addr_on_shard(to, 3));
    }
}

#[test]
fn data_to_an_offline_address_gets_dst_offline_with_the_same_id() {
    let gw = Gateway::start("[runtime]\nshards = 2");
    let me = addr_on_shard(0, 2);
    let mut client = TcpClient::hello(gw.tcp_addr(), me);

    // Never seen, owned by this shard and by the other one.
    for (shard, id) in [(0, 70), (1, 71)] {
        client.data(addr_on_shard(shard, 2), id, b"anyone there?");
        let error = client.expect_error(code::DST_OFFLINE, id);
        assert_eq!(error.dst, me);
    }

    // Was online, then left.
    let gone = addr_on_shard(1, 2);
    assert_eq!(client.subscribe(gone, 80).online, 0);
    let leaving = TcpClient::hello(gw.tcp_addr(), gone);
    assert_eq!(client.expect_frame(kind::PRESENCE, 0).presence().online, 1);
    drop(leaving);
    assert_eq!(client.expect_frame(kind::PRESENCE, 0).presence().online, 0);
    client.data(gone, 81, b"too late");
    client.expect_error(code::DST_OFFLINE, 81);

    client.heartbeat(82);
}

#[test]
fn ten_thousand_frames_arrive_in_order_across_shards() {
    const FRAMES: u64 = 10_000;
    const PAYLOAD_BYTES: usize = 64;
    const FRAMES_PER_WRITE: u64 = 100;
    // A queue big enough that no frame is dropped while the reader keeps up.
    let gw = Gateway::start("[runtime]\nshards = 2\n[limits]\noutbound_queue_bytes = 67108864");
    let source = addr_on_shard(0, 2);
    let destination = addr_on_shard(1, 2);
    let mut receiver = TcpClient::hello(gw.tcp_addr(), destination);
    let mut sender = TcpClient::hello(gw.tcp_addr(), source);

    let reader = thread::spawn(move || {
        for seq in 0..FRAMES {
            let frame = receiver.recv();
            assert_eq!(frame.kind, kind::DATA, "frame {seq}: {frame:?}");
            assert_eq!(frame.src, source);
            assert_eq!(frame.id, seq, "frame out of order");
            assert_eq!(
                frame.payload,
                payload_for(seq, PAYLOAD_BYTES),
                "payload of {seq}"
            );
        }
        receiver
    });

    let mut batch = Vec::new();
    for seq in 0..FRAMES {
        batch.extend(
            Frame::new(
                kind::DATA,
                source,
                destination,
                seq,
                payload_for(seq, PAYLOAD_BYTES),
            )
            .encode(),
        );
        if (seq + 1) % FRAMES_PER_WRITE == 0 {
            sender.send_bytes(&batch);
            batch.clear();
        }
    }
    sender.send_bytes(&batch);

    let mut receiver = reader.join().expect("reader thread");
    sender.heartbeat(1);
    receiver.heartbeat(2);
}

#[test]
fn a_thousand_concurrent_clients_all_get_their_data() {
    const PAIRS: usize = 500;
    const MESSAGES: u64 = 10;
    const WORKERS: usize = 4;
    let gw = Gateway::start("[runtime]\nshards = 2");

    // All thousand are connected before any traffic starts.
    let mut pairs: Vec<(TcpClient, TcpClient)> = (0..PAIRS)
        .map(|_| {
            (
                TcpClient::hello(gw.tcp_addr(), Uuid::new_v4()),
                TcpClient::hello(gw.tcp_addr(), Uuid::new_v4()),
            )
        })
        .collect();

    thread::scope(|scope| {
        let workers: Vec<_> = pairs
            .chunks_mut(PAIRS / WORKERS)
            .map(|chunk| {
                scope.spawn(move || {
                    for (a, b) in chunk.iter_mut() {
                        for m in 0..MESSAGES {
                            let (to_b, to_a) = (b.addr, a.addr);
                            a.data(to_b, m, &payload_for(m, 32));
                            b.data(to_a, m + MESSAGES, &payload_for(m + MESSAGES, 16));
                        }
                    }
                    for (a, b) in chunk.iter_mut() {
                        let (from_a, from_b) = (a.addr, b.addr);
                        for m in 0..MESSAGES {
                            expect_data(b, from_a, m, &payload_for(m, 32));
                            expect_data(a, from_b, m + MESSAGES, &payload_for(m + MESSAGES, 16));
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("worker thread");
        }
    });
}

#[test]
fn second_hello_takes_the_address_over_without_presence_change() {
    let gw = Gateway::start("[runtime]\nshards = 2");
    let contested = Uuid::new_v4();
    let mut watcher = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());
    assert_eq!(
        watcher.subscribe(contested, 1),
        Presence {
            address: contested,
            online: 0,
            at_us: 0
        }
    );

    let mut first = TcpClient::hello(gw.tcp_addr(), contested);
    let online = watcher.expect_frame(kind::PRESENCE, 0).presence();
    assert_eq!((online.address, online.online), (contested, 1));

    let mut second = TcpClient::hello(gw.tcp_addr(), contested);
    let error = first.expect_error(code::TAKEN_OVER, 0);
    assert_eq!(error.dst, contested);
    first.expect_closed();

    let mut peer = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());
    let peer_addr = peer.addr;
    peer.data(contested, 77, b"to the new one");
    expect_data(&mut second, peer_addr, 77, b"to the new one");
    second.heartbeat(2);

    // The address never went offline: no PRESENCE at all for the takeover,
    // and a fresh look still shows the original online time.
    watcher.expect_silence(Duration::from_millis(300));
    let mut late_watcher = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());
    assert_eq!(late_watcher.subscribe(contested, 3), online);

    drop(second);
    let offline = watcher.expect_frame(kind::PRESENCE, 0).presence();
    assert_eq!((offline.address, offline.online), (contested, 0));
}

#[test]
fn takeover_works_whichever_shards_accept_the_two_connections() {
    const TAKEOVERS: usize = 20;
    let gw = Gateway::start("[runtime]\nshards = 2");
    let mut watcher = TcpClient::hello(gw.tcp_addr(), addr_on_shard(0, 2));
    let mut peer = TcpClient::hello(gw.tcp_addr(), addr_on_shard(1, 2));
    let peer_addr = peer.addr;
    let mut winners = Vec::new();

    for round in 0..TAKEOVERS {
        let contested = addr_on_shard(round % 2, 2);
        let round_id = round as u64 + 1;
        assert_eq!(watcher.subscribe(contested, round_id).online, 0);
        let mut first = TcpClient::hello(gw.tcp_addr(), contested);
        let online = watcher.expect_frame(kind::PRESENCE, 0).presence();
        assert_eq!((online.address, online.online), (contested, 1));

        let mut second = TcpClient::hello(gw.tcp_addr(), contested);
        first.expect_error_then_close(code::TAKEN_OVER, 0);

        peer.data(contested, round_id, b"after takeover");
        expect_data(&mut second, peer_addr, round_id, b"after takeover");
        second.data(peer_addr, round_id, b"from the winner");
        expect_data(&mut peer, contested, round_id, b"from the winner");
        winners.push(second);
    }

    // Twenty takeovers, not one presence change.
    watcher.expect_silence(Duration::from_millis(300));
    let expected: BTreeSet<Uuid> = winners.iter().map(|c| c.addr).collect();
    drop(winners);
    let mut gone = BTreeSet::new();
    for _ in 0..TAKEOVERS {
        let offline = watcher.expect_frame(kind::PRESENCE, 0).presence();
        assert_eq!(offline.online, 0);
        assert!(
            gone.insert(offline.address),
            "two offline pushes for {}",
            offline.address
        );
    }
    assert_eq!(gone, expected);
}

/// Reads every ERROR waiting for `sender`; each must be `slow_consumer` for
/// an id it sent, and none twice.
fn collect_drops(sender: &mut TcpClient, dropped: &mut BTreeSet<u64>, sent: u64, wait: Duration) {
    loop {
        match sender.poll(wait) {
            Event::Frame(frame) => {
                assert_eq!(frame.kind, kind::ERROR, "sender got {frame:?}");
                assert_error(&frame, code::SLOW_CONSUMER, frame.id);
                assert!(
                    (1..=sent).contains(&frame.id),
                    "slow_consumer for unsent id {}",
                    frame.id
                );
                assert!(
                    dropped.insert(frame.id),
                    "two slow_consumer errors for id {}",
                    frame.id
                );
            }
            Event::Silent => return,
            Event::Closed => panic!("sender closed after slow_consumer; it must be kept"),
        }
    }
}

#[test]
fn slow_consumer_drops_are_reported_and_never_stall_the_sender() {
    const PAYLOAD_BYTES: usize = 32 * 1024;
    const FRAMES_MAX: u64 = 4096;
    const POLL_EVERY: u64 = 8;
    let gw = Gateway::start("[runtime]\nshards = 2\n[limits]\noutbound_queue_bytes = 65536");
    let source = addr_on_shard(0, 2);
    let slow = addr_on_shard(1, 2);
    let mut receiver = TcpClient::hello(gw.tcp_addr(), slow);
    let mut sender = TcpClient::hello(gw.tcp_addr(), source);
    let mut other = TcpClient::hello(gw.tcp_addr(), addr_on_shard(1, 2));
    let other_addr = other.addr;

    // The receiver reads nothing until the gateway starts dropping.
    let mut dropped = BTreeSet::new();
    let mut sent = 0;
    while dropped.is_empty() {
        assert!(
            sent < FRAMES_MAX,
            "no slow_consumer after {sent} frames of {PAYLOAD_BYTES} bytes"
        );
        sent += 1;
        sender.data(slow, sent, &payload_for(sent, PAYLOAD_BYTES));
        if sent % POLL_EVERY == 0 {
            collect_drops(&mut sender, &mut dropped, sent, Duration::from_millis(1));
        }
    }
    let first_error = *dropped.iter().next().expect("one drop");
    assert!(first_error > 0);

    // The sender still reaches others while the slow receiver is stuck.
    sender.data(other_addr, 1 << 40, b"still here");
    expect_data(&mut other, source, 1 << 40, b"still here");
    sender.send(kind::TIME_REQ, source, NIL, 1 << 41, &7u64.to_be_bytes());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "no TIME_RESP for the sender");
        let frame = sender.recv();
        if frame.kind == kind::TIME_RESP {
            assert_eq!(frame.id, 1 << 41);
            break;
        }
        assert_error(&frame, code::SLOW_CONSUMER, frame.id);
        assert!((1..=sent).contains(&frame.id));
        assert!(
            dropped.insert(frame.id),
            "two slow_consumer errors for id {}",
            frame.id
        );
    }

    // Nothing is dropped silently: every frame is delivered, in order, or
    // reported to the sender, never both.
    let mut delivered = BTreeSet::new();
    let mut last = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while (delivered.len() + dropped.len()) < sent as usize {
        assert!(
            Instant::now() < deadline,
            "{sent} sent, {} delivered, {} reported dropped",
            delivered.len(),
            dropped.len()
        );
        match receiver.poll(Duration::from_millis(50)) {
            Event::Frame(frame) => {
                assert_eq!(frame.kind, kind::DATA, "receiver got {frame:?}");
                assert_eq!(frame.src, source);
                assert!(frame.id > last, "id {} after {last}", frame.id);
                assert_eq!(frame.payload, payload_for(frame.id, PAYLOAD_BYTES));
                last = frame.id;
                delivered.insert(frame.id);
            }
            Event::Silent => {}
            Event::Closed => panic!("slow receiver was disconnected"),
        }
        collect_drops(&mut sender, &mut dropped, sent, Duration::from_millis(1));
    }
    assert!(
        delivered.is_disjoint(&dropped),
        "a frame both delivered and reported dropped"
    );
    assert!(!delivered.contains(&first_error));
    let everything: BTreeSet<u64> = (1..=sent).collect();
    assert_eq!(&delivered | &dropped, everything);
    receiver.expect_silence(Duration::from_millis(200));

    // Once drained, the receiver gets new data again.
    sender.data(slow, sent + 1, b"after the drain");
    expect_data(&mut receiver, source, sent + 1, b"after the drain");
}
