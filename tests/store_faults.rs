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
//! Reading of the contract: `queue_capacity` counts STATE_PUTs waiting to be
//! committed (the config file: "State writes waiting to be committed"), so
//! with the database down and nothing else pending exactly `queue_capacity`
//! writes are taken and every later one is refused.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::mariadb::{self, hex_upper, MariaDbServer};
use common::tcp::assert_error;
use common::{addr_on_shard, code, kind, Event, Frame, Gateway, TcpClient, NIL};
use uuid::Uuid;

const SHARDS: usize = 2;

/// `[store] queue_capacity` of the gateways here.
const CAPACITY: usize = 200;

/// How long the queued writes may take to be acknowledged once the
/// database is back.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long refusals beyond the bound may take while the database is down.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the test watches for an ACK that must not come while the
/// database is down.
const NO_ACK_WINDOW: Duration = Duration::from_millis(500);

/// One poll of one connection while watching many.
const POLL_SLICE: Duration = Duration::from_millis(2);

fn fault_config(url: &str) -> String {
    format!(
        "[runtime]\nshards = {SHARDS}\n[store]\nmysql_url = \"{url}\"\n\
         queue_capacity = {CAPACITY}\nretry_initial_ms = 50\nretry_max_ms = 500\n\
         batch_interval_ms = 2\n"
    )
}

fn start_gateway(db: &MariaDbServer) -> Gateway {
    Gateway::start_with_env(&fault_config(&db.url()), &[("GATEWAY_MYSQL_URL", None)])
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
    let addrs: Vec<Uuid> = last.keys().copied().collect();
    let rows = mariadb::state_rows(db.port, &addrs);
    for (addr, (blob, at)) in last {
        let row = rows.get(addr).unwrap_or_else(|| {
            panic!("no gateway_state row for {addr}: an acknowledged write is lost")
        });
        assert_eq!(
            (row.state_hex.as_str(), row.updated_at_us),
            (hex_upper(blob).as_str(), *at),
            "gateway_state of {addr} is not its last acknowledged write {:?}",
            String::from_utf8_lossy(blob)
        );
    }
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

#[test]
fn writes_queue_while_the_database_is_down_and_commit_when_it_returns() {
    let mut db = MariaDbServer::install_and_start();
    let gw = start_gateway(&db);
    let mut clients = register(&gw, DOWN_CLIENTS);
    let mut last: HashMap<Uuid, (Vec<u8>, u64)> = HashMap::new();

    // Database up: acknowledged as usual.
    for client in &mut clients {
        let addr = client.addr;
        client.state_put(1, &blob_of(addr, 1));
    }
    let first: Vec<Vec<u64>> = clients.iter().map(|_| vec![1]).collect();
    let acks = collect_acks(&mut clients, &first, Duration::from_secs(10));
    for (client, acks) in clients.iter().zip(&acks) {
        last.insert(client.addr, (blob_of(client.addr, 1), acks[&1]));
    }
    assert_stored(&db, &gw, &last);

    // Database gone.
    db.kill();
    let down_ids: Vec<u64> = (100..100 + DOWN_WRITES).collect();
    for client in &mut clients {
        let addr = client.addr;
        let bytes: Vec<u8> = down_ids
            .iter()
            .flat_map(|id| put_frame(addr, *id, &blob_of(addr, *id)))
            .collect();
        client.send_bytes(&bytes);
    }
    let sent = Instant::now();

    // Beyond the bound: store_unavailable at once. No ACK at all.
    let total = DOWN_CLIENTS * DOWN_WRITES as usize;
    let expected_refusals = total - CAPACITY;
    let mut refused: Vec<Vec<u64>> = clients.iter().map(|_| Vec::new()).collect();
    let mut refusals = 0;
    while refusals < expected_refusals && sent.elapsed() < REFUSAL_TIMEOUT {
        for (i, client) in clients.iter_mut().enumerate() {
            match client.poll(POLL_SLICE) {
                Event::Silent => {}
                Event::Closed => panic!(
                    "connection of {} closed while the database is down",
                    client.addr
                ),
                Event::Frame(frame) => {
                    assert_ne!(
                        frame.kind,
                        kind::STATE_ACK,
                        "STATE_ACK while the database is down (killed {:?} before): {frame:?}",
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
    }
    let refusal_time = sent.elapsed();
    assert_eq!(
        refusals, expected_refusals,
        "with {total} writes queued against a dead database and queue_capacity {CAPACITY}, \
         {refusals} were refused within {REFUSAL_TIMEOUT:?} (expected {expected_refusals})"
    );
    assert_all_silent(
        &mut clients,
        NO_ACK_WINDOW,
        "nothing may arrive while the database is down and the refusals are all in",
    );
    // Connections stay usable.
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
        let suffix = &down_ids[accepted.len()..];
        let mut sorted = refused.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted, suffix,
            "refused writes of {} are not the last ones it sent",
            client.addr
        );
        queued.push(accepted);
    }
    let accepted_total: usize = queued.iter().map(Vec::len).sum();
    assert_eq!(
        accepted_total, CAPACITY,
        "writes queued while the database is down"
    );

    // Still full: one more is refused at once.
    let asked = Instant::now();
    clients[0].state_put(999, b"over the bound");
    let frame = clients[0].recv_within(REFUSAL_TIMEOUT);
    assert_error(&frame, code::STORE_UNAVAILABLE, 999);
    let late_refusal = asked.elapsed();

    // Database back on the same data and port: every queued write is
    // acknowledged.
    db.start();
    let restarted = Instant::now();
    let acks = collect_acks(&mut clients, &queued, RECOVERY_TIMEOUT);
    let recovery = restarted.elapsed();
    for ((client, ids), acks) in clients.iter().zip(&queued).zip(&acks) {
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
                "queued write acknowledged at {} before the first at {before}",
                acks[id]
            );
            last.insert(client.addr, (blob_of(client.addr, *id), acks[id]));
        }
    }
    assert_all_silent(
        &mut clients,
        Duration::from_millis(200),
        "after every queued ACK",
    );
    assert_stored(&db, &gw, &last);

    // And writes are acknowledged promptly again.
    clients[1].put_acked_within(1000, b"after recovery", Duration::from_secs(3));
    eprintln!(
        "refusals in {refusal_time:?}, late refusal in {late_refusal:?}, recovery in {recovery:?}"
    );
}

#[test]
fn gateway_starts_while_the_database_is_down() {
    // Installed but never started: nothing listens on its port yet.
    let mut db = MariaDbServer::install();
    let gw = start_gateway(&db);
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
    let gw = start_gateway(&db);
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
