//! The state store when its database fails (PROTOCOL.md rule 7): writes stay
//! queued (bounded by `[store] queue_capacity`) while MariaDB is down, writes
//! beyond the bound get `ERROR store_unavailable` at once, the connection
//! stays usable, and every queued write is acknowledged once the database is
//! back, with nothing acknowledged lost.
//!
//! Each test runs a MariaDB server of its own (`mariadb-install-db` +
//! `mariadbd` in a temporary directory on a free port of 127.0.0.1) and kills
//! it with SIGKILL to inject the fault.
//!
//! Readings of the contract:
//! - `queue_capacity` counts STATE_PUTs waiting to be committed (the config
//!   file: "State writes waiting to be committed"), those of a batch on its
//!   way to a hung database included; so with the database unable to commit
//!   and nothing else pending, exactly `queue_capacity` writes are taken and
//!   every later one is refused;
//! - a state the database can never take (larger than its
//!   `max_allowed_packet`) is answered `store_unavailable` and does not hold
//!   up the writes of other clients;
//! - what STATE_GET answers while the database is unreachable is not said,
//!   so it is not checked here.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::mariadb::{self, MariaDbServer};
use common::tcp::assert_error;
use common::{addr_on_shard, code, kind, Event, Frame, Gateway, TcpClient, NIL};
use uuid::Uuid;

const SHARDS: usize = 2;

/// `[store] queue_capacity` of the gateways here.
const CAPACITY: usize = 200;

/// How long the queued writes may take to be acknowledged once the
/// database is back.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long refusals beyond the bound may take while the database is down
/// (they take milliseconds; the slack is for a loaded machine).
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a graceful shutdown may take with `shutdown_flush_ms = 1000`.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the test watches for an ACK that must not come while the
/// database is down.
const NO_ACK_WINDOW: Duration = Duration::from_millis(500);

/// One poll of one connection while watching many.
const POLL_SLICE: Duration = Duration::from_millis(2);

/// A gateway on `db` with a small queue and fast retries; `store_extra` adds
/// `[store]` keys.
fn start_gateway(db: &MariaDbServer, store_extra: &str) -> Gateway {
    let config = format!(
        "[runtime]\nshards = {SHARDS}\n[store]\nmysql_url = \"{}\"\n\
         queue_capacity = {CAPACITY}\nretry_initial_ms = 50\nretry_max_ms = 500\n\
         batch_interval_ms = 2\n{store_extra}",
        db.url()
    );
    Gateway::start_with_env(&config, &[("GATEWAY_MYSQL_URL", None)])
}

fn put_frame(src: Uuid, id: u64, blob: &[u8]) -> Vec<u8> {
    Frame::new(kind::STATE_PUT, src, NIL, id, blob).encode()
}

fn blob_of(addr: Uuid, id: u64) -> Vec<u8> {
    format!("{{\"addr\":\"{addr}\",\"write\":{id}}}").into_bytes()
}

/// Asserts that no frame arrives on any client for `window`.
fn assert_all_silent(clients: &mut [TcpClient], window: Duration, why: &str) {
    let until = Instant::now() + window;
    while Instant::now() < until {
        for client in clients.iter_mut() {
            match client.poll(POLL_SLICE) {
                Event::Silent => {}
                Event::Frame(frame) => panic!("{why}: {} got {frame:?}", client.addr),
                Event::Closed => panic!("{why}: connection of {} closed", client.addr),
            }
        }
    }
}

/// Waits until every client got STATE_ACKs for exactly `expected[i]`, all
/// within `timeout`; returns `updated_at_us` by client and id.
fn collect_acks(
    clients: &mut [TcpClient],
    expected: &[Vec<u64>],
    timeout: Duration,
) -> Vec<HashMap<u64, u64>> {
    let deadline = Instant::now() + timeout;
    let mut acks: Vec<HashMap<u64, u64>> = clients.iter().map(|_| HashMap::new()).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        while acks[i].len() < expected[i].len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = match client.poll(left) {
                Event::Frame(frame) => frame,
                Event::Closed => panic!(
                    "connection of {} closed while waiting for ACKs",
                    client.addr
                ),
                Event::Silent => {
                    let missing: Vec<u64> = expected[i]
                        .iter()
                        .copied()
                        .filter(|id| !acks[i].contains_key(id))
                        .collect();
                    panic!(
                        "queued writes of {} not acknowledged within {timeout:?}: ids {missing:?}",
                        client.addr
                    )
                }
            };
            assert_eq!(
                frame.kind,
                kind::STATE_ACK,
                "expected STATE_ACK, got {frame:?}"
            );
            assert!(
                expected[i].contains(&frame.id),
                "STATE_ACK for id {} which was refused or never sent ({})",
                frame.id,
                client.addr
            );
            assert!(
                acks[i].insert(frame.id, frame.state_ack()).is_none(),
                "second STATE_ACK for id {} ({})",
                frame.id,
                client.addr
            );
        }
    }
    acks
}

/// Asserts that the database and the gateway both hold `last` for every
/// address: (blob, updated_at_us of its ACK).
fn assert_stored(db: &MariaDbServer, gw: &Gateway, last: &HashMap<Uuid, (Vec<u8>, u64)>) {
    mariadb::assert_state_rows(
        db.port,
        last.iter()
            .map(|(addr, (blob, at))| (*addr, blob.as_slice(), *at)),
    );
    let mut reader = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());
    for (i, (addr, (blob, at))) in last.iter().enumerate() {
        let state = reader.get_state(*addr, 9000 + i as u64);
        assert_eq!(
            (&state.blob, state.updated_at_us),
            (blob, *at),
            "STATE_GET of {addr} after recovery"
        );
    }
}

fn register(gw: &Gateway, count: usize) -> Vec<TcpClient> {
    (0..count)
        .map(|i| TcpClient::hello(gw.tcp_addr(), addr_on_shard(i % SHARDS, SHARDS)))
        .collect()
}

/// Clients writing while the database is down, and writes on each: more than
/// `CAPACITY` in all.
const DOWN_CLIENTS: usize = 30;
const DOWN_WRITES: u64 = 10;

/// Every frame `client` has ready now, without waiting for more.
fn drain(client: &mut TcpClient) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        match client.poll(POLL_SLICE) {
            Event::Frame(frame) => frames.push(frame),
            Event::Silent => return frames,
            Event::Closed => panic!("connection of {} closed", client.addr),
        }
    }
}

/// With the database unable to commit and nothing pending: every client
/// sends `down_ids`, more than `CAPACITY` writes in all. Checks that exactly
/// `CAPACITY` are queued and the rest refused at once, the refused ones being
/// the last each client sent; that no ACK arrives; that the connections stay
/// usable; and that one more write is refused at once. Returns the queued ids
/// of every client.
fn overflow_while_down(clients: &mut [TcpClient], down_ids: &[u64]) -> Vec<Vec<u64>> {
    for client in clients.iter_mut() {
        let addr = client.addr;
        let bytes: Vec<u8> = down_ids
            .iter()
            .flat_map(|id| put_frame(addr, *id, &blob_of(addr, *id)))
            .collect();
        client.send_bytes(&bytes);
    }
    let sent = Instant::now();

    let total = clients.len() * down_ids.len();
    let expected_refusals = total - CAPACITY;
    let mut refused: Vec<Vec<u64>> = clients.iter().map(|_| Vec::new()).collect();
    let mut refusals = 0;
    while refusals < expected_refusals && sent.elapsed() < REFUSAL_TIMEOUT {
        for (i, client) in clients.iter_mut().enumerate() {
            for frame in drain(client) {
                assert_ne!(
                    frame.kind,
                    kind::STATE_ACK,
                    "STATE_ACK {:?} after the writes, while the database cannot commit: {frame:?}",
                    sent.elapsed()
                );
                assert_error(&frame, code::STORE_UNAVAILABLE, frame.id);
                assert!(
                    down_ids.contains(&frame.id),
                    "refusal of an unknown id: {frame:?}"
                );
                refused[i].push(frame.id);
                refusals += 1;
            }
        }
    }
    let refusal_time = sent.elapsed();
    assert_eq!(
        refusals, expected_refusals,
        "with {total} writes sent while the database cannot commit and queue_capacity {CAPACITY}, \
         {refusals} were refused within {REFUSAL_TIMEOUT:?} (expected {expected_refusals})"
    );
    assert_all_silent(
        clients,
        NO_ACK_WINDOW,
        "nothing may arrive while the database cannot commit and the refusals are all in",
    );
    for (i, client) in clients.iter_mut().enumerate() {
        client.heartbeat(500 + i as u64);
    }

    // Per connection, writes arrive in order and the queue does not drain,
    // so the refused ones are the last ones sent.
    let mut queued: Vec<Vec<u64>> = Vec::new();
    for (client, refused) in clients.iter().zip(&refused) {
        let refused_set: HashSet<u64> = refused.iter().copied().collect();
        assert_eq!(
            refused_set.len(),
            refused.len(),
            "a write refused twice ({})",
            client.addr
        );
        let accepted: Vec<u64> = down_ids
            .iter()
            .copied()
            .filter(|id| !refused_set.contains(id))
            .collect();
        let mut sorted = refused.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            &down_ids[accepted.len()..],
            "refused writes of {} are not the last ones it sent",
            client.addr
        );
        queued.push(accepted);
    }
    let accepted_total: usize = queued.iter().map(Vec::len).sum();
    assert_eq!(
        accepted_total, CAPACITY,
        "writes taken while the database cannot commit"
    );

    // Still full: one more is refused at once.
    let asked = Instant::now();
    clients[0].state_put(999, b"over the bound");
    let frame = match clients[0].poll(REFUSAL_TIMEOUT) {
        Event::Frame(frame) => frame,
        Event::Closed => panic!("connection closed after a write over the bound"),
        Event::Silent => panic!(
            "a STATE_PUT beyond queue_capacity ({CAPACITY} writes already queued, none \
             committed) got no answer within {REFUSAL_TIMEOUT:?}: it was queued, so the \
             bound does not hold"
        ),
    };
    assert_error(&frame, code::STORE_UNAVAILABLE, 999);
    eprintln!(
        "{refusals} refusals within {refusal_time:?}; one more refused in {:?}",
        asked.elapsed()
    );
    queued
}

/// Waits for the ACKs of `queued` once the database commits again, checks
/// their times, and records each client's last acknowledged write in `last`.
fn acks_after_recovery(
    clients: &mut [TcpClient],
    queued: &[Vec<u64>],
    last: &mut HashMap<Uuid, (Vec<u8>, u64)>,
) {
    let back = Instant::now();
    let acks = collect_acks(clients, queued, RECOVERY_TIMEOUT);
    eprintln!("queued writes acknowledged within {:?}", back.elapsed());
    for ((client, ids), acks) in clients.iter().zip(queued).zip(&acks) {
        let times: Vec<u64> = ids.iter().map(|id| acks[id]).collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "updated_at_us of {} goes backwards: {times:?}",
            client.addr
        );
        if let Some(id) = ids.last() {
            let before = last[&client.addr].1;
            assert!(
                acks[id] >= before,
                "queued write acknowledged at {} before the earlier write at {before}",
                acks[id]
            );
            last.insert(client.addr, (blob_of(client.addr, *id), acks[id]));
        }
    }
    assert_all_silent(
        clients,
        Duration::from_millis(200),
        "after every queued ACK",
    );
}

/// Every client writes once and gets its ACK; returns what was written.
fn first_writes(clients: &mut [TcpClient]) -> HashMap<Uuid, (Vec<u8>, u64)> {
    for client in clients.iter_mut() {
        let addr = client.addr;
        client.state_put(1, &blob_of(addr, 1));
    }
    let first: Vec<Vec<u64>> = clients.iter().map(|_| vec![1]).collect();
    let acks = collect_acks(clients, &first, Duration::from_secs(10));
    clients
        .iter()
        .zip(&acks)
        .map(|(client, acks)| (client.addr, (blob_of(client.addr, 1), acks[&1])))
        .collect()
}

#[test]
fn writes_queue_while_the_database_is_down_and_commit_when_it_returns() {
    let mut db = MariaDbServer::install_and_start();
    let gw = start_gateway(&db, "");
    let mut clients = register(&gw, DOWN_CLIENTS);
    let mut last = first_writes(&mut clients);
    assert_stored(&db, &gw, &last);

    db.kill();
    let down_ids: Vec<u64> = (100..100 + DOWN_WRITES).collect();
    let queued = overflow_while_down(&mut clients, &down_ids);

    // Back on the same data and port: every queued write is acknowledged.
    db.start();
    acks_after_recovery(&mut clients, &queued, &mut last);
    assert_stored(&db, &gw, &last);

    // And writes are acknowledged promptly again.
    clients[1].put_acked_within(1000, b"after recovery", Duration::from_secs(3));
}

#[test]
fn writes_queue_while_the_database_hangs_and_commit_when_it_resumes() {
    let db = MariaDbServer::install_and_start();
    let gw = start_gateway(&db, "");
    let mut clients = register(&gw, DOWN_CLIENTS);
    let mut last = first_writes(&mut clients);

    // SIGSTOP: connections stay open, nothing is answered; a batch sent now
    // hangs in flight and still counts against the bound.
    db.signal(libc::SIGSTOP);
    let down_ids: Vec<u64> = (100..100 + DOWN_WRITES).collect();
    let queued = overflow_while_down(&mut clients, &down_ids);

    db.signal(libc::SIGCONT);
    acks_after_recovery(&mut clients, &queued, &mut last);
    assert_stored(&db, &gw, &last);
}

#[test]
fn shutdown_while_the_database_is_down_gives_up_after_the_flush_deadline() {
    let mut db = MariaDbServer::install_and_start();
    let mut gw = start_gateway(&db, "shutdown_flush_ms = 1000\n");
    let mut clients = register(&gw, 6);
    let last = first_writes(&mut clients);

    db.kill();
    for client in &mut clients {
        let addr = client.addr;
        let bytes: Vec<u8> = (2..=4)
            .flat_map(|id| put_frame(addr, id, &blob_of(addr, id)))
            .collect();
        client.send_bytes(&bytes);
    }
    assert_all_silent(
        &mut clients,
        NO_ACK_WINDOW,
        "no ACK while the database is down",
    );

    // Nothing can commit: no ACK, then shutting_down, then exit.
    let signalled = Instant::now();
    gw.signal(libc::SIGTERM);
    for client in &mut clients {
        let frame = client.recv_within(SHUTDOWN_TIMEOUT);
        assert_error(&frame, code::SHUTTING_DOWN, 0);
        client.expect_closed();
    }
    let status = gw.wait_exit(SHUTDOWN_TIMEOUT.saturating_sub(signalled.elapsed()));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());

    // What was never acknowledged was never claimed; what was is there.
    db.start();
    mariadb::assert_state_rows(
        db.port,
        last.iter()
            .map(|(addr, (blob, at))| (*addr, blob.as_slice(), *at)),
    );
}

#[test]
fn gateway_starts_while_the_database_is_down() {
    // Installed but never started: nothing listens on its port yet.
    let mut db = MariaDbServer::install();
    let gw = start_gateway(&db, "");
    let mut clients = register(&gw, 10);
    let ids: Vec<u64> = (1..=3).collect();
    for client in &mut clients {
        let addr = client.addr;
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|id| put_frame(addr, *id, &blob_of(addr, *id)))
            .collect();
        client.send_bytes(&bytes);
    }
    assert_all_silent(
        &mut clients,
        NO_ACK_WINDOW,
        "no ACK before the database exists",
    );
    for (i, client) in clients.iter_mut().enumerate() {
        client.heartbeat(100 + i as u64);
    }

    db.start();
    let expected: Vec<Vec<u64>> = clients.iter().map(|_| ids.clone()).collect();
    let acks = collect_acks(&mut clients, &expected, RECOVERY_TIMEOUT);
    let mut last = HashMap::new();
    for (client, acks) in clients.iter().zip(&acks) {
        last.insert(client.addr, (blob_of(client.addr, 3), acks[&3]));
    }
    assert_stored(&db, &gw, &last);
}

/// Rounds of pipelined writes; the database is killed right after round 1
/// is sent, while its batches are in flight.
const CRASH_CLIENTS: usize = 20;
const CRASH_WRITES: u64 = 5;

#[test]
fn database_killed_with_writes_in_flight_loses_nothing_acknowledged() {
    let mut db = MariaDbServer::install_and_start();
    let gw = start_gateway(&db, "");
    let mut clients = register(&gw, CRASH_CLIENTS);
    let mut last = HashMap::new();

    for round in 0..3u64 {
        let ids: Vec<u64> = (round * 100 + 1..=round * 100 + CRASH_WRITES).collect();
        for client in &mut clients {
            let addr = client.addr;
            let bytes: Vec<u8> = ids
                .iter()
                .flat_map(|id| put_frame(addr, *id, &blob_of(addr, *id)))
                .collect();
            client.send_bytes(&bytes);
        }
        if round == 1 {
            db.kill();
            std::thread::sleep(Duration::from_millis(300));
            db.start();
        }
        let expected: Vec<Vec<u64>> = clients.iter().map(|_| ids.clone()).collect();
        let acks = collect_acks(&mut clients, &expected, RECOVERY_TIMEOUT);
        for (client, acks) in clients.iter().zip(&acks) {
            let times: Vec<u64> = ids.iter().map(|id| acks[id]).collect();
            assert!(
                times.windows(2).all(|w| w[0] <= w[1]),
                "updated_at_us of {} goes backwards in round {round}: {times:?}",
                client.addr
            );
            let id = *ids.last().expect("writes");
            last.insert(client.addr, (blob_of(client.addr, id), acks[&id]));
        }
        // Every round's last write is what the database holds.
        assert_stored(&db, &gw, &last);
    }
}

#[test]
fn a_state_the_database_cannot_take_does_not_block_other_writes() {
    // The server takes packets of 1 MiB; the gateway takes payloads of 1 MiB,
    // so a maximum-size state cannot be stored there, ever.
    let mut db = MariaDbServer::install();
    db.server_args.push("--max-allowed-packet=1M".to_string());
    db.start();
    let gw = start_gateway(&db, "");
    let big_addr = Uuid::new_v4();
    let mut big = TcpClient::connect(gw.tcp_addr());
    let max = big.register(big_addr).max_payload as usize;
    let mut small = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());
    let before = small.put_acked(1, b"before");

    big.state_put(2, &common::random_bytes(max));
    small.state_put(3, b"after");
    // The other client's write commits as usual...
    let frame = match small.poll(Duration::from_secs(5)) {
        Event::Frame(frame) => frame,
        Event::Closed => panic!("connection closed"),
        Event::Silent => panic!(
            "a small STATE_PUT got no STATE_ACK within 5 s while another client's \
             {max}-byte state (over the server's max_allowed_packet) was pending: \
             one write the database cannot take blocks every other"
        ),
    };
    assert_eq!((frame.kind, frame.id), (kind::STATE_ACK, 3), "{frame:?}");
    assert!(frame.state_ack() >= before);
    // ...and the write that can never commit is refused, connection kept.
    let frame = match big.poll(Duration::from_secs(5)) {
        Event::Frame(frame) => frame,
        Event::Closed => panic!("connection closed"),
        Event::Silent => panic!(
            "a {max}-byte STATE_PUT the database cannot take (max_allowed_packet 1 MiB) \
             got neither STATE_ACK nor ERROR store_unavailable within 5 s"
        ),
    };
    assert_error(&frame, code::STORE_UNAVAILABLE, 2);
    big.heartbeat(4);
    big.state_get(big_addr, 5);
    big.expect_error(code::NOT_FOUND, 5);
}
