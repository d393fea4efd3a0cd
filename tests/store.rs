//! The state store (PROTOCOL.md, session rules 7, 8 and 9), run against both
//! backends: the embedded SQLite store and the shared MariaDB
//! (`mysql://root@127.0.0.1:3306/test`).
//!
//! Every scenario is a function of the backend; each has one test per
//! backend. The MariaDB tests fail, never skip, when MariaDB is unreachable.
//! With MariaDB the rows are also read back with the `mysql` command line
//! client, independently of the gateway: table `gateway_state`, the address
//! as 16 raw bytes, the blob in `state`, and `updated_at_us`.
//!
//! Readings of the contract these tests rely on:
//! - an empty STATE_PUT stores an empty state: STATE_GET then answers STATE
//!   with an empty blob, not `not_found`;
//! - a subscriber gets one STATE push per acknowledged write, in the order of
//!   the writes, with the ACK's `updated_at_us`;
//! - `updated_at_us` of one address never goes backwards, and the stored state
//!   is the last one written;
//! - on SIGTERM, every STATE_PUT a client had written to its open connection
//!   before the signal is acknowledged before that connection's
//!   `ERROR shutting_down`;
//! - rule 8 allows STATE_GET two answers, STATE or `not_found`; with the
//!   database up, that holds from the ready line on (`store_unavailable` is
//!   the answer to a write the store cannot take).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::json::{b64_decode, get_bool, get_str, get_u64, get_uuid, uuid_str};
use common::mariadb::{self, crc32, hex_upper, TempDir, SHARED_PORT, SHARED_URL};
use common::{
    addr_on_shard, assert_time_between, code, kind, now_us, random_bytes, Event, Frame, Gateway,
    State, TcpClient, WsClient, NIL,
};
use serde_json::{json, Value};
use uuid::Uuid;

/// Settings every store test shares: two shards, short batches.
const COMMON_TOML: &str = "[runtime]\nshards = 2\n[store]\nbatch_interval_ms = 2\n";

/// Shards of every gateway here.
const SHARDS: usize = 2;

/// How long a graceful shutdown may take (queued writes flush within the
/// default `shutdown_flush_ms` of 5 s).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a batch of large or many writes may take to be acknowledged.
const BULK_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a scenario's state is kept.
struct Backend {
    /// The `[store]` TOML fragment that selects the backend.
    toml: String,
    /// MariaDB at 127.0.0.1:3306 (rows can be read with `mysql`).
    mariadb: bool,
    /// The SQLite data directory, kept across gateway restarts.
    data_dir: Option<TempDir>,
}

impl Backend {
    /// The embedded SQLite store in a fresh directory that outlives every
    /// gateway of the test (so a restarted gateway finds the same data).
    fn sqlite() -> Backend {
        let dir = TempDir::new("sqlite-store");
        Backend {
            toml: format!(
                "[store]\nmysql_url = \"\"\ndata_dir = {:?}\n",
                dir.path().display().to_string()
            ),
            mariadb: false,
            data_dir: Some(dir),
        }
    }

    /// The shared MariaDB; panics if it is unreachable.
    fn mariadb() -> Backend {
        mariadb::require_shared();
        Backend {
            toml: format!("[store]\nmysql_url = \"{SHARED_URL}\"\n"),
            mariadb: true,
            data_dir: None,
        }
    }

    /// A gateway on this backend. `GATEWAY_MYSQL_URL` is removed from its
    /// environment so the fragment alone decides the backend.
    fn start(&self, extra: &str) -> Gateway {
        let config = format!("{}{COMMON_TOML}{extra}", self.toml);
        let gw = Gateway::start_with_env(&config, &[("GATEWAY_MYSQL_URL", None)]);
        assert_eq!(gw.shards, SHARDS, "shard count of the gateway");
        gw
    }

    fn sqlite_file(&self) -> Option<PathBuf> {
        self.data_dir
            .as_ref()
            .map(|dir| dir.path().join("gateway.sqlite3"))
    }

    /// With MariaDB, asserts the row of `addr` holds `blob` at `at`.
    fn assert_row(&self, addr: Uuid, blob: &[u8], at: u64) {
        if !self.mariadb {
            return;
        }
        let rows = mariadb::state_rows(SHARED_PORT, &[addr]);
        let row = rows.get(&addr).unwrap_or_else(|| {
            panic!(
                "no gateway_state row where address = unhex('{}') (address {addr} must be stored as 16 raw bytes)",
                hex_upper(addr.as_bytes())
            )
        });
        assert_eq!(
            row.state_hex,
            hex_upper(blob),
            "gateway_state.state of {addr}"
        );
        assert_eq!(
            row.updated_at_us, at,
            "gateway_state.updated_at_us of {addr}"
        );
    }
}

/// Both tests of a scenario.
macro_rules! on_both_backends {
    ($scenario:ident, $sqlite:ident, $mariadb:ident) => {
        #[test]
        fn $sqlite() {
            $scenario(&Backend::sqlite());
        }

        #[test]
        fn $mariadb() {
            $scenario(&Backend::mariadb());
        }
    };
}

/// A STATE_PUT frame from `src`.
fn put_frame(src: Uuid, id: u64, blob: &[u8]) -> Vec<u8> {
    Frame::new(kind::STATE_PUT, src, NIL, id, blob).encode()
}

/// Asserts a STATE without printing a large blob in full.
fn assert_state(what: &str, got: &State, address: Uuid, at: u64, online: u8, blob: &[u8]) {
    assert_eq!(got.address, address, "{what}: STATE address");
    assert_eq!(got.updated_at_us, at, "{what}: STATE updated_at_us");
    assert_eq!(got.online, online, "{what}: STATE online");
    if blob.len() <= 1024 {
        assert_eq!(got.blob, blob, "{what}: STATE blob");
    } else {
        assert!(
            got.blob == blob,
            "{what}: STATE blob of {} bytes differs from the {} bytes written",
            got.blob.len(),
            blob.len()
        );
    }
}

/// The next frame on `client` must be a pushed STATE (id 0).
fn expect_push(client: &mut TcpClient, address: Uuid, at: u64, blob: &[u8]) {
    let frame = client.expect_frame(kind::STATE, 0);
    let what = format!("STATE push to {}", client.addr);
    assert_state(&what, &frame.state(), address, at, 1, blob);
}

/// Checks a JSON `state` frame's fields against a write.
fn assert_json_state(value: &Value, address: Uuid, at: u64, online: bool, blob: &[u8]) {
    assert_eq!(get_uuid(value, "address"), address, "address of {value}");
    assert_eq!(
        get_u64(value, "updated_at_us"),
        at,
        "updated_at_us of {value}"
    );
    assert_eq!(get_bool(value, "online"), online, "online of {value}");
    match std::str::from_utf8(blob) {
        Ok(text) => {
            assert_eq!(get_str(value, "payload"), text, "payload of {value}");
            assert!(
                value.get("payload_b64").is_none(),
                "UTF-8 state sent as payload_b64: {value}"
            );
        }
        Err(_) => {
            assert_eq!(
                b64_decode(get_str(value, "payload_b64")),
                blob,
                "payload_b64 of {value}"
            );
            assert!(
                value.get("payload").is_none(),
                "non-UTF-8 state has a payload field: {value}"
            );
        }
    }
}

/// Reads one frame per expected id from `client` within `timeout`, each a
/// STATE_ACK; returns `updated_at_us` by id.
fn collect_acks(client: &mut TcpClient, ids: &[u64], timeout: Duration) -> HashMap<u64, u64> {
    let deadline = Instant::now() + timeout;
    let mut acks = HashMap::new();
    while acks.len() < ids.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = match client.poll(left) {
            Event::Frame(frame) => frame,
            Event::Closed => panic!(
                "connection of {} closed with {} of {} STATE_ACKs",
                client.addr,
                acks.len(),
                ids.len()
            ),
            Event::Silent => panic!(
                "{} of {} STATE_ACKs for {} within {timeout:?}; missing ids {:?}",
                acks.len(),
                ids.len(),
                client.addr,
                ids.iter()
                    .filter(|id| !acks.contains_key(*id))
                    .collect::<Vec<_>>()
            ),
        };
        assert_eq!(
            frame.kind,
            kind::STATE_ACK,
            "expected STATE_ACK, got {frame:?}"
        );
        assert!(
            ids.contains(&frame.id),
            "STATE_ACK for an id never sent: {frame:?}"
        );
        let at = frame.state_ack();
        assert!(
            acks.insert(frame.id, at).is_none(),
            "second STATE_ACK for id {}",
            frame.id
        );
    }
    acks
}

/// Asserts that acknowledged times do not go backwards in the order the
/// writes were sent, and returns the last write's time.
fn assert_monotonic(addr: Uuid, ids: &[u64], acks: &HashMap<u64, u64>) -> u64 {
    let times: Vec<u64> = ids.iter().map(|id| acks[id]).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "updated_at_us of {addr} goes backwards in the order of its writes: {times:?}"
    );
    *times.last().expect("at least one write")
}

// ----- put, ack, get, online --------------------------------------------------

fn put_ack_get_across_shards(backend: &Backend) {
    let gw = backend.start("");
    for writer_shard in 0..SHARDS {
        let other_shard = (writer_shard + 1) % SHARDS;
        let writer_addr = addr_on_shard(writer_shard, SHARDS);
        let mut writer = TcpClient::hello(gw.tcp_addr(), writer_addr);
        let mut same = TcpClient::hello(gw.tcp_addr(), addr_on_shard(writer_shard, SHARDS));
        let mut cross = TcpClient::hello(gw.tcp_addr(), addr_on_shard(other_shard, SHARDS));

        let blob = format!("{{\"relay1\":true,\"shard\":{writer_shard}}}").into_bytes();
        let before = now_us();
        let at = writer.put_acked(11, &blob);
        let after = now_us();
        assert_time_between("STATE_ACK updated_at_us", at, before, after);
        backend.assert_row(writer_addr, &blob, at);

        // ACK means committed: any client reads it at once.
        for (what, reader) in [
            ("reader on the writer's shard", &mut same),
            ("reader on the other shard", &mut cross),
            ("the writer itself", &mut writer),
        ] {
            let state = reader.get_state(writer_addr, 12);
            assert_state(what, &state, writer_addr, at, 1, &blob);
        }

        // A second write replaces the first.
        let blob2 = format!("{{\"relay1\":false,\"shard\":{writer_shard}}}").into_bytes();
        let at2 = writer.put_acked(13, &blob2);
        assert!(
            at2 > at,
            "second write at {at2} is not after the first at {at}"
        );
        backend.assert_row(writer_addr, &blob2, at2);
        for (what, reader) in [("same shard", &mut same), ("other shard", &mut cross)] {
            let state = reader.get_state(writer_addr, 14);
            assert_state(what, &state, writer_addr, at2, 1, &blob2);
        }

        // Offline once the writer is gone; the state stays.
        let mut watcher = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());
        assert_eq!(watcher.subscribe(writer_addr, 15).online, 1);
        drop(writer);
        let presence = watcher.expect_frame(kind::PRESENCE, 0).presence();
        assert_eq!((presence.address, presence.online), (writer_addr, 0));
        for (what, reader) in [("same shard", &mut same), ("other shard", &mut cross)] {
            let state = reader.get_state(writer_addr, 16);
            assert_state(
                &format!("{what}, after the writer left"),
                &state,
                writer_addr,
                at2,
                0,
                &blob2,
            );
        }
    }
}

on_both_backends!(
    put_ack_get_across_shards,
    sqlite_put_ack_get_across_shards,
    mariadb_put_ack_get_across_shards
);

// ----- right after start -----------------------------------------------------------

fn reads_and_writes_right_after_start(backend: &Backend) {
    // A client that connects as soon as the gateway says it is ready.
    let gw = backend.start("");
    let mut client = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());
    client.state_get(Uuid::new_v4(), 1);
    let frame = client.recv();
    assert_eq!(
        (frame.kind, frame.id),
        (kind::ERROR, 1),
        "answer to STATE_GET: {frame:?}"
    );
    let (got, message) = frame.error();
    assert_eq!(
        got,
        code::NOT_FOUND,
        "STATE_GET of a never-stored address right after the ready line answered \
         ERROR {got} ({message:?}), not not_found"
    );
    let at = client.put_acked(2, b"first");
    let state = client.get_state(client.addr, 3);
    assert_state("right after start", &state, client.addr, at, 1, b"first");
}

on_both_backends!(
    reads_and_writes_right_after_start,
    sqlite_reads_and_writes_right_after_start,
    mariadb_reads_and_writes_right_after_start
);

// ----- not_found, arbitrary bytes ---------------------------------------------

fn not_found_and_arbitrary_bytes(backend: &Backend) {
    let gw = backend.start("");
    let mut reader = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());

    reader.state_get(Uuid::new_v4(), 21);
    reader.expect_error(code::NOT_FOUND, 21);
    reader.heartbeat(22);
    reader.state_get(reader.addr, 23);
    reader.expect_error(code::NOT_FOUND, 23);

    // A STATE_PUT with a foreign src is dropped and stores nothing.
    let foreign = Uuid::new_v4();
    reader.send(kind::STATE_PUT, foreign, NIL, 24, b"not mine");
    reader.expect_error(code::SRC_MISMATCH, 24);
    reader.state_get(foreign, 25);
    reader.expect_error(code::NOT_FOUND, 25);

    let writer_addr = Uuid::new_v4();
    let mut writer = TcpClient::hello(gw.tcp_addr(), writer_addr);
    let mut every_byte: Vec<u8> = (0..=255).collect();
    every_byte.extend((0..=255u8).rev());
    let sql_like = b"'); drop table gateway_state; -- \\ \" \0 \x1a %_ ?".to_vec();
    let blobs: [(&str, Vec<u8>); 4] = [
        ("every byte value", every_byte),
        ("SQL-like bytes", sql_like),
        ("empty", Vec::new()),
        ("one zero byte", vec![0]),
    ];
    for (i, (what, blob)) in blobs.iter().enumerate() {
        let id = 30 + i as u64;
        let at = writer.put_acked(id, blob);
        backend.assert_row(writer_addr, blob, at);
        let state = reader.get_state(writer_addr, id);
        assert_state(what, &state, writer_addr, at, 1, blob);
    }
}

on_both_backends!(
    not_found_and_arbitrary_bytes,
    sqlite_not_found_and_arbitrary_bytes,
    mariadb_not_found_and_arbitrary_bytes
);

// ----- blobs of the maximum payload ---------------------------------------------

/// Clients that write a maximum-size state at the same time.
const LARGE_WRITERS: usize = 16;

fn max_payload_blobs(backend: &Backend) {
    let gw = backend.start("");
    let first_addr = Uuid::new_v4();
    let mut first = TcpClient::connect(gw.tcp_addr());
    let max = first.register(first_addr).max_payload as usize;
    let mut reader = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());

    let blob = random_bytes(max);
    let at = first.put_acked_within(41, &blob, BULK_TIMEOUT);
    let state = reader.get_state(first_addr, 42);
    assert_eq!(state.blob.len(), max, "STATE blob size");
    assert_state("max-size state", &state, first_addr, at, 1, &blob);

    // Several at once: one batch may hold many megabytes.
    let mut writers: Vec<(TcpClient, Vec<u8>)> = (0..LARGE_WRITERS)
        .map(|i| {
            let client = TcpClient::hello(gw.tcp_addr(), addr_on_shard(i % SHARDS, SHARDS));
            (client, random_bytes(max))
        })
        .collect();
    for (client, blob) in &mut writers {
        client.state_put(43, blob);
    }
    let mut written = vec![(first_addr, blob, at)];
    for (client, blob) in &mut writers {
        let acks = collect_acks(client, &[43], BULK_TIMEOUT);
        written.push((client.addr, std::mem::take(blob), acks[&43]));
    }
    for (i, (addr, blob, at)) in written.iter().enumerate() {
        let state = reader.get_state(*addr, 44 + i as u64);
        assert_state(&format!("max-size state {i}"), &state, *addr, *at, 1, blob);
    }

    if backend.mariadb {
        let addrs: Vec<Uuid> = written.iter().map(|(addr, _, _)| *addr).collect();
        let list = addrs
            .iter()
            .map(|a| format!("unhex('{}')", hex_upper(a.as_bytes())))
            .collect::<Vec<_>>()
            .join(",");
        let out = mariadb::mysql(
            SHARED_PORT,
            &format!(
                "select hex(address), length(state), crc32(state), updated_at_us \
                 from gateway_state where address in ({list})"
            ),
        );
        let rows: HashMap<Uuid, (usize, u32, u64)> = out
            .lines()
            .filter(|l| !l.is_empty())
            .map(|line| {
                let f: Vec<&str> = line.split('\t').collect();
                assert_eq!(f.len(), 4, "row {line:?}");
                let parsed = (
                    f[1].parse().expect("length"),
                    f[2].parse().expect("crc32"),
                    f[3].parse().expect("updated_at_us"),
                );
                (Uuid::parse_str(f[0]).expect("address"), parsed)
            })
            .collect();
        for (addr, blob, at) in &written {
            assert_eq!(
                rows.get(addr),
                Some(&(blob.len(), crc32(blob), *at)),
                "gateway_state (length, crc32, updated_at_us) of {addr}"
            );
        }
        // Keep the shared database small.
        drop(gw);
        mariadb::mysql(
            SHARED_PORT,
            &format!("delete from gateway_state where address in ({list})"),
        );
    }
}

on_both_backends!(
    max_payload_blobs,
    sqlite_max_payload_blobs,
    mariadb_max_payload_blobs
);

// ----- subscribers ----------------------------------------------------------------

/// Writes sent back to back without waiting for their ACKs.
const BURST: u64 = 20;

fn subscribers_receive_committed_states(backend: &Backend) {
    let gw = backend.start("");
    let writer_addr = addr_on_shard(0, SHARDS);
    let mut writer = TcpClient::hello(gw.tcp_addr(), writer_addr);
    let mut same = TcpClient::hello(gw.tcp_addr(), addr_on_shard(0, SHARDS));
    let mut cross = TcpClient::hello(gw.tcp_addr(), addr_on_shard(1, SHARDS));
    let page_addr = Uuid::new_v4();
    let mut page = WsClient::hello_json(gw.ws_addr(), page_addr);

    assert_eq!(same.subscribe(writer_addr, 51).online, 1);
    assert_eq!(cross.subscribe(writer_addr, 51).online, 1);
    page.send_json(&json!({"kind": "subscribe", "address": uuid_str(writer_addr), "id": 51}));
    let presence = page.expect_json("presence", 51);
    assert!(get_bool(&presence, "online"), "presence {presence}");

    // One push per acknowledged write, to every subscriber.
    for i in 0..5u64 {
        let blob = format!("{{\"seq\":{i},\"temp\":21.5}}").into_bytes();
        let at = writer.put_acked(60 + i, &blob);
        expect_push(&mut same, writer_addr, at, &blob);
        expect_push(&mut cross, writer_addr, at, &blob);
        let value = page.expect_json("state", 0);
        assert_json_state(&value, writer_addr, at, true, &blob);
    }

    // A burst in flight at once: still one push per write, in order.
    let ids: Vec<u64> = (100..100 + BURST).collect();
    let blobs: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| format!("burst {id}").into_bytes())
        .collect();
    let bytes: Vec<u8> = ids
        .iter()
        .zip(&blobs)
        .flat_map(|(id, blob)| put_frame(writer_addr, *id, blob))
        .collect();
    writer.send_bytes(&bytes);
    let acks = collect_acks(&mut writer, &ids, BULK_TIMEOUT);
    assert_monotonic(writer_addr, &ids, &acks);
    for (id, blob) in ids.iter().zip(&blobs) {
        let at = acks[id];
        expect_push(&mut same, writer_addr, at, blob);
        expect_push(&mut cross, writer_addr, at, blob);
        let value = page.expect_json("state", 0);
        assert_json_state(&value, writer_addr, at, true, blob);
    }

    // Bytes that are not UTF-8 reach a JSON subscriber as payload_b64.
    let binary: Vec<u8> = (0..=255).collect();
    let at = writer.put_acked(130, &binary);
    expect_push(&mut same, writer_addr, at, &binary);
    expect_push(&mut cross, writer_addr, at, &binary);
    let value = page.expect_json("state", 0);
    assert_json_state(&value, writer_addr, at, true, &binary);

    // No pushes after UNSUBSCRIBE.
    same.unsubscribe(writer_addr, 131);
    same.heartbeat(132);
    let last = b"after unsubscribe".to_vec();
    let last_at = writer.put_acked(133, &last);
    expect_push(&mut cross, writer_addr, last_at, &last);
    let value = page.expect_json("state", 0);
    assert_json_state(&value, writer_addr, last_at, true, &last);
    same.expect_silence(Duration::from_millis(300));

    // A JSON page as writer and reader.
    assert_eq!(cross.subscribe(page_addr, 140).online, 1);
    let before = now_us();
    page.send_json(&json!({"kind": "state_put", "id": 141, "payload": "{\"page\":1}"}));
    let ack = page.expect_json("state_ack", 141);
    let page_at = get_u64(&ack, "updated_at_us");
    assert_time_between("state_ack updated_at_us", page_at, before, now_us());
    expect_push(&mut cross, page_addr, page_at, b"{\"page\":1}");
    backend.assert_row(page_addr, b"{\"page\":1}", page_at);

    let page_bytes = [0u8, 255, 1, 2];
    page.send_json(&json!({"kind": "state_put", "id": 142, "payload_b64": "AP8BAg=="}));
    let page_at = get_u64(&page.expect_json("state_ack", 142), "updated_at_us");
    expect_push(&mut cross, page_addr, page_at, &page_bytes);

    page.send_json(&json!({"kind": "state_get", "id": 143, "address": uuid_str(page_addr)}));
    let value = page.expect_json("state", 143);
    assert_json_state(&value, page_addr, page_at, true, &page_bytes);

    page.send_json(&json!({"kind": "state_get", "id": 144, "address": uuid_str(writer_addr)}));
    let value = page.expect_json("state", 144);
    assert_json_state(&value, writer_addr, last_at, true, &last);

    page.send_json(&json!({"kind": "state_get", "id": 145, "address": uuid_str(Uuid::new_v4())}));
    page.expect_json_error(code::NOT_FOUND, 145);

    // A binary WebSocket client reads the same state.
    let mut binary_page = WsClient::hello_binary(gw.ws_addr(), Uuid::new_v4());
    binary_page.send_frame(&Frame::new(
        kind::STATE_GET,
        binary_page.addr,
        NIL,
        146,
        writer_addr.as_bytes().to_vec(),
    ));
    let frame = binary_page.recv_frame();
    assert_eq!((frame.kind, frame.id), (kind::STATE, 146), "{frame:?}");
    assert_state(
        "binary WebSocket STATE_GET",
        &frame.state(),
        writer_addr,
        last_at,
        1,
        &last,
    );
}

on_both_backends!(
    subscribers_receive_committed_states,
    sqlite_subscribers_receive_committed_states,
    mariadb_subscribers_receive_committed_states
);

// ----- restart -------------------------------------------------------------------

fn state_survives_a_restart(backend: &Backend) {
    let mut gw = backend.start("");
    let addr = Uuid::new_v4();
    let mut writer = TcpClient::hello(gw.tcp_addr(), addr);
    let blob = format!("{{\"restart\":\"{}\"}}", Uuid::new_v4()).into_bytes();
    let at = writer.put_acked(71, &blob);

    gw.signal(libc::SIGTERM);
    writer.expect_error(code::SHUTTING_DOWN, 0);
    writer.expect_closed();
    let status = gw.wait_exit(SHUTDOWN_TIMEOUT);
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    drop(gw);
    if let Some(file) = backend.sqlite_file() {
        assert!(file.is_file(), "{} missing after shutdown", file.display());
    }
    backend.assert_row(addr, &blob, at);

    let gw = backend.start("");
    let mut reader = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());
    let state = reader.get_state(addr, 72);
    assert_state("after restart", &state, addr, at, 0, &blob);
    reader.state_get(Uuid::new_v4(), 73);
    reader.expect_error(code::NOT_FOUND, 73);

    let mut writer = TcpClient::hello(gw.tcp_addr(), addr);
    let state = reader.get_state(addr, 74);
    assert_state("after restart, writer back", &state, addr, at, 1, &blob);
    let at2 = writer.put_acked(75, b"second life");
    assert!(at2 > at, "write after restart at {at2} is not after {at}");
    let state = reader.get_state(addr, 76);
    assert_state(
        "after restart, new write",
        &state,
        addr,
        at2,
        1,
        b"second life",
    );
}

on_both_backends!(
    state_survives_a_restart,
    sqlite_state_survives_a_restart,
    mariadb_state_survives_a_restart
);

// ----- shutdown ordering ---------------------------------------------------------

/// Connections writing when SIGTERM arrives, and writes on each.
const SHUTDOWN_CLIENTS: usize = 10;
const SHUTDOWN_WRITES: u64 = 50;
const SHUTDOWN_JSON_WRITES: u64 = 20;

fn shutdown_acks_every_write_before_shutting_down(backend: &Backend) {
    let mut gw = backend.start("");
    let mut clients: Vec<TcpClient> = (0..SHUTDOWN_CLIENTS)
        .map(|i| TcpClient::hello(gw.tcp_addr(), addr_on_shard(i % SHARDS, SHARDS)))
        .collect();
    let page_addr = Uuid::new_v4();
    let mut page = WsClient::hello_json(gw.ws_addr(), page_addr);
    let ids: Vec<u64> = (1..=SHUTDOWN_WRITES).collect();
    let blob = |addr: Uuid, id: u64| format!("{{\"addr\":\"{addr}\",\"write\":{id}}}").into_bytes();

    for client in &mut clients {
        let addr = client.addr;
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|id| put_frame(addr, *id, &blob(addr, *id)))
            .collect();
        client.send_bytes(&bytes);
    }
    for id in 1..=SHUTDOWN_JSON_WRITES {
        let text = String::from_utf8(blob(page_addr, id)).expect("UTF-8");
        page.send_json(&json!({"kind": "state_put", "id": id, "payload": text}));
    }
    gw.signal(libc::SIGTERM);

    let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
    let mut last = Vec::new();
    for client in &mut clients {
        let mut acks = HashMap::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = client.recv_within(left);
            match frame.kind {
                kind::STATE_ACK => {
                    assert!(
                        ids.contains(&frame.id),
                        "STATE_ACK for unknown id {frame:?}"
                    );
                    assert!(
                        acks.insert(frame.id, frame.state_ack()).is_none(),
                        "second ACK {frame:?}"
                    );
                }
                kind::ERROR => {
                    common::tcp::assert_error(&frame, code::SHUTTING_DOWN, 0);
                    break;
                }
                _ => panic!("unexpected frame during shutdown: {frame:?}"),
            }
        }
        let missing: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| !acks.contains_key(id))
            .collect();
        assert!(
            missing.is_empty(),
            "{} of {SHUTDOWN_WRITES} writes sent by {} before SIGTERM got no STATE_ACK before ERROR shutting_down; missing ids {missing:?}",
            missing.len(),
            client.addr
        );
        client.expect_closed();
        let at = assert_monotonic(client.addr, &ids, &acks);
        last.push((client.addr, blob(client.addr, SHUTDOWN_WRITES), at));
    }

    let mut page_acks = HashMap::new();
    loop {
        let value = page.recv_json();
        match get_str(&value, "kind") {
            "state_ack" => {
                let id = get_u64(&value, "id");
                assert!(
                    (1..=SHUTDOWN_JSON_WRITES).contains(&id),
                    "state_ack {value}"
                );
                assert!(
                    page_acks
                        .insert(id, get_u64(&value, "updated_at_us"))
                        .is_none(),
                    "second ack {value}"
                );
            }
            "error" => {
                common::json::assert_json_error(&value, code::SHUTTING_DOWN, 0);
                break;
            }
            _ => panic!("unexpected JSON during shutdown: {value}"),
        }
    }
    assert_eq!(
        page_acks.len() as u64,
        SHUTDOWN_JSON_WRITES,
        "JSON writes acknowledged before shutting_down: ids {:?}",
        {
            let mut v: Vec<_> = page_acks.keys().collect();
            v.sort();
            v
        }
    );
    page.expect_closed();
    let page_ids: Vec<u64> = (1..=SHUTDOWN_JSON_WRITES).collect();
    let at = assert_monotonic(page_addr, &page_ids, &page_acks);
    last.push((page_addr, blob(page_addr, SHUTDOWN_JSON_WRITES), at));

    let status = gw.wait_exit(deadline.saturating_duration_since(Instant::now()));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    drop(gw);

    // Acknowledged means committed: a new gateway reads every last write.
    let gw = backend.start("");
    let mut reader = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());
    for (i, (addr, blob, at)) in last.iter().enumerate() {
        let state = reader.get_state(*addr, 1000 + i as u64);
        assert_state("last write before shutdown", &state, *addr, *at, 0, blob);
        backend.assert_row(*addr, blob, *at);
    }
}

on_both_backends!(
    shutdown_acks_every_write_before_shutting_down,
    sqlite_shutdown_acks_every_write_before_shutting_down,
    mariadb_shutdown_acks_every_write_before_shutting_down
);

// ----- many clients ----------------------------------------------------------------

const BULK_CLIENTS: usize = 100;
const BULK_WRITES: u64 = 10;

fn thousand_writes_from_a_hundred_clients(backend: &Backend) {
    let gw = backend.start("");
    let mut clients: Vec<TcpClient> = (0..BULK_CLIENTS)
        .map(|i| TcpClient::hello(gw.tcp_addr(), addr_on_shard(i % SHARDS, SHARDS)))
        .collect();
    let ids: Vec<u64> = (1..=BULK_WRITES).collect();
    let blob = |client: usize, id: u64| {
        let mut blob = format!("{{\"client\":{client},\"write\":{id},\"pad\":\"").into_bytes();
        blob.extend(vec![b'x'; (client * 7 + id as usize) % 50]);
        blob.extend_from_slice(b"\"}");
        blob
    };
    for (i, client) in clients.iter_mut().enumerate() {
        let addr = client.addr;
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|id| put_frame(addr, *id, &blob(i, *id)))
            .collect();
        client.send_bytes(&bytes);
    }
    let deadline = Instant::now() + BULK_TIMEOUT;
    let mut last = Vec::new();
    for (i, client) in clients.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let acks = collect_acks(client, &ids, left);
        let at = assert_monotonic(client.addr, &ids, &acks);
        last.push((client.addr, blob(i, BULK_WRITES), at));
    }

    // Read everything back at once from one client.
    let mut reader = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());
    let bytes: Vec<u8> = last
        .iter()
        .enumerate()
        .flat_map(|(i, (addr, _, _))| {
            Frame::new(
                kind::STATE_GET,
                reader.addr,
                NIL,
                i as u64 + 1,
                addr.as_bytes().to_vec(),
            )
            .encode()
        })
        .collect();
    reader.send_bytes(&bytes);
    let mut seen = vec![false; last.len()];
    for _ in 0..last.len() {
        let frame = reader.recv();
        assert_eq!(frame.kind, kind::STATE, "answer to a STATE_GET: {frame:?}");
        let index = usize::try_from(frame.id)
            .ok()
            .and_then(|id| id.checked_sub(1));
        let index = index
            .filter(|i| *i < last.len())
            .unwrap_or_else(|| panic!("STATE id {frame:?}"));
        assert!(!seen[index], "second answer to STATE_GET id {}", frame.id);
        seen[index] = true;
        let (addr, blob, at) = &last[index];
        assert_state("last of ten writes", &frame.state(), *addr, *at, 1, blob);
    }

    if backend.mariadb {
        mariadb::assert_state_rows(
            SHARED_PORT,
            last.iter()
                .map(|(addr, blob, at)| (*addr, blob.as_slice(), *at)),
        );
    }
}

on_both_backends!(
    thousand_writes_from_a_hundred_clients,
    sqlite_thousand_writes_from_a_hundred_clients,
    mariadb_thousand_writes_from_a_hundred_clients
);

// ----- configuration ------------------------------------------------------------------

#[test]
fn mariadb_url_from_the_environment_overrides_the_config_file() {
    mariadb::require_shared();
    // The file names a port where nothing listens; the environment wins.
    let config = format!(
        "{COMMON_TOML}[store]\nmysql_url = \"mysql://root@127.0.0.1:1/test\"\n\
         retry_initial_ms = 50\nretry_max_ms = 200\n"
    );
    let gw = Gateway::start_with_env(&config, &[("GATEWAY_MYSQL_URL", Some(SHARED_URL))]);
    let addr = Uuid::new_v4();
    let mut writer = TcpClient::hello(gw.tcp_addr(), addr);
    let at = writer.put_acked(81, b"from the environment");
    let rows = mariadb::state_rows(SHARED_PORT, &[addr]);
    let row = rows
        .get(&addr)
        .unwrap_or_else(|| panic!("no gateway_state row for {addr} in {SHARED_URL}"));
    assert_eq!(row.state_hex, hex_upper(b"from the environment"));
    assert_eq!(row.updated_at_us, at);
}
