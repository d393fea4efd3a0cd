//! Several gateway nodes routing through NATS: each test starts its own
//! `nats-server` (with JetStream) on a spare loopback port and three gateway
//! nodes, and talks to clients on different nodes.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::json::{get_str, get_u64, uuid_str};
use common::mariadb::TempDir;
use common::{code, kind, Event, Gateway, TcpClient, WsClient};
use serde_json::json;
use uuid::Uuid;

/// The NATS server binary (Debian's package; `.ci/run` installs it).
const NATS_SERVER: &str = "nats-server";

/// How long a node may take to see the cluster (connect, open the
/// directory, hear the others' heartbeats).
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Node liveness in these tests: heartbeats every 200 ms, down after 1 s.
const NODE_TIMEOUT_MS: u64 = 1000;

/// A `nats-server` of the test's own, with JetStream, killed on drop.
struct Nats {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl Nats {
    fn start() -> Nats {
        let port = free_port();
        let mut nats = Nats {
            child: None,
            port,
            dir: TempDir::new("nats"),
        };
        nats.spawn();
        nats
    }

    fn spawn(&mut self) {
        let child = Command::new(NATS_SERVER)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {NATS_SERVER} (is it installed?): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {addr}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a spare port");
    l.local_addr().expect("local addr").port()
}

fn node(nats: &Nats, name: &str) -> Gateway {
    Gateway::start(&format!(
        "[cluster]\nnats_url = \"{}\"\nnode_id = \"{name}\"\nheartbeat_ms = 200\nnode_timeout_ms = {NODE_TIMEOUT_MS}\n",
        nats.url()
    ))
}

fn three_nodes(nats: &Nats) -> [Gateway; 3] {
    [node(nats, "n1"), node(nats, "n2"), node(nats, "n3")]
}

/// Sends DATA from `from` to `to` until one arrives (the nodes are still
/// joining), then checks it and drains what else arrived. Each try's
/// `dst_offline` is read back at the sender.
fn wait_routable(from: &mut TcpClient, to: &mut TcpClient) {
    let deadline = Instant::now() + JOIN_TIMEOUT;
    let mut id = 1_000_000;
    loop {
        assert!(
            Instant::now() < deadline,
            "{} never reached {} across nodes",
            from.addr,
            to.addr
        );
        id += 1;
        from.data(to.addr, id, b"probe");
        match to.poll(Duration::from_millis(300)) {
            Event::Frame(f) if f.kind == kind::DATA => {
                assert_eq!(f.src, from.addr);
                break;
            }
            Event::Frame(f) => panic!("unexpected {f:?}"),
            Event::Closed => panic!("receiver closed"),
            Event::Silent => {
                // The sender got dst_offline for this try.
                let f = from.recv();
                assert_eq!(f.kind, kind::ERROR, "{f:?}");
                assert_eq!(f.error().0, code::DST_OFFLINE, "{f:?}");
            }
        }
    }
    // Frames held up by an outage may still come in: let them.
    while let Event::Frame(f) = to.poll(Duration::from_millis(200)) {
        assert_eq!((f.kind, f.src), (kind::DATA, from.addr), "{f:?}");
    }
}

#[test]
fn data_crosses_nodes_both_ways() {
    let nats = Nats::start();
    let [n1, n2, n3] = three_nodes(&nats);
    let mut a = TcpClient::hello(n1.tcp_addr(), Uuid::new_v4());
    let mut b = TcpClient::hello(n2.tcp_addr(), Uuid::new_v4());
    let mut c = TcpClient::hello(n3.tcp_addr(), Uuid::new_v4());
    wait_routable(&mut a, &mut b);

    a.data(b.addr, 1, b"a to b");
    let f = b.expect_frame(kind::DATA, 1);
    assert_eq!(
        (f.src, f.dst, f.payload.as_slice()),
        (a.addr, b.addr, &b"a to b"[..])
    );

    b.data(a.addr, 2, b"b to a");
    let f = a.expect_frame(kind::DATA, 2);
    assert_eq!((f.src, f.payload.as_slice()), (b.addr, &b"b to a"[..]));

    wait_routable(&mut c, &mut a);
    c.data(a.addr, 3, b"c to a");
    assert_eq!(a.expect_frame(kind::DATA, 3).payload, b"c to a");

    // Nobody has this address on any node.
    let nobody = Uuid::new_v4();
    a.data(nobody, 4, b"x");
    a.expect_error(code::DST_OFFLINE, 4);

    // Node 1's /metrics tells of the link.
    let m = scrape(n1.ws_addr());
    assert_eq!(metric(&m, "gateway_cluster_connected"), 1, "{m}");
    assert_eq!(metric(&m, "gateway_cluster_nodes_alive"), 2, "{m}");
    assert!(metric(&m, "gateway_cluster_data_sent_total") >= 1, "{m}");
    assert!(
        metric(&m, "gateway_cluster_data_received_total") >= 2,
        "{m}"
    );
    assert!(metric(&m, "gateway_cluster_lookups_total") >= 1, "{m}");
}

/// GET /metrics from a node's WebSocket port (allowed from loopback).
fn scrape(ws: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(ws).expect("connect to the ws port");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {ws}\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("the answer, then close");
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    raw
}

/// The value of an unlabelled sample in a scrape.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name}"))
}

#[test]
fn a_web_page_on_one_node_commands_a_controller_on_another() {
    let nats = Nats::start();
    let [n1, n2, _n3] = three_nodes(&nats);
    let mut controller = TcpClient::hello(n2.tcp_addr(), Uuid::new_v4());
    let mut probe = TcpClient::hello(n1.tcp_addr(), Uuid::new_v4());
    wait_routable(&mut controller, &mut probe);

    let page = Uuid::new_v4();
    let mut ws = WsClient::hello_json(n1.ws_addr(), page);
    ws.send_json(&json!({"kind": "data", "dst": uuid_str(controller.addr), "id": 5, "payload": "{\"set\":\"relay1\",\"on\":true}"}));
    let cmd = controller.expect_frame(kind::DATA, 5);
    assert_eq!(cmd.src, page);
    assert_eq!(cmd.payload, br#"{"set":"relay1","on":true}"#);

    controller.data(page, 6, b"relay1 on");
    let reply = ws.expect_json("data", 6);
    assert_eq!(get_str(&reply, "src"), uuid_str(controller.addr));
    assert_eq!(get_str(&reply, "payload"), "relay1 on");
    assert_eq!(get_u64(&reply, "id"), 6);
}

/// Publishes `payload` on `subject` with the NATS text protocol and waits
/// for the server's PONG, so the message is out before this returns.
fn nats_publish(nats: &Nats, msgs: &[(&str, Vec<u8>)]) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", nats.port)).expect("connect to nats");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = b"CONNECT {\"verbose\":false}\r\n".to_vec();
    for (subject, payload) in msgs {
        out.extend_from_slice(format!("PUB {subject} {}\r\n", payload.len()).as_bytes());
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"PING\r\n");
    s.write_all(&out).expect("publish");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("PONG") {
        let n = s.read(&mut buf).expect("read from nats");
        assert!(n > 0, "nats closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn garbage_on_the_cluster_subjects_reaches_no_client_and_breaks_nothing() {
    let nats = Nats::start();
    let [n1, n2, _n3] = three_nodes(&nats);
    let mut a = TcpClient::hello(n1.tcp_addr(), Uuid::new_v4());
    let mut b = TcpClient::hello(n2.tcp_addr(), Uuid::new_v4());
    wait_routable(&mut a, &mut b);

    // A message header as the nodes write it: version 1, the sender's
    // name, its incarnation.
    let header = |name: &str| {
        let mut h = vec![1u8, name.len() as u8];
        h.extend_from_slice(name.as_bytes());
        h.extend_from_slice(&7u64.to_be_bytes());
        h
    };
    // A DATA record carrying `frame` from connection (0, 0, 0).
    let data_record = |frame: &[u8]| {
        let mut r = vec![1u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        r.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        r.extend_from_slice(frame);
        r
    };
    // Frames for b that are not whole DATA frames: a length that lies, a
    // kind that is not DATA, a bare header cut short.
    let mut lying = common::Frame::new(kind::DATA, a.addr, b.addr, 1, b"abc".to_vec()).encode();
    lying[7] = 200;
    let welcome = common::Frame::new(kind::WELCOME, Uuid::nil(), b.addr, 2, vec![0; 16]).encode();
    let short = lying[..30].to_vec();
    let mut node_msg = header("evil");
    for f in [&lying, &welcome, &short] {
        node_msg.extend(data_record(f));
    }
    let mut cut = header("evil");
    cut.extend_from_slice(&data_record(b"0123456789")[..9]);
    let garbage = common::random_bytes(3000);
    nats_publish(
        &nats,
        &[
            ("gw.node.n2", node_msg),
            ("gw.node.n2", cut),
            ("gw.node.n2", garbage.clone()),
            ("gw.presence", [header("evil"), vec![1, 2, 3]].concat()),
            ("gw.presence", garbage.clone()),
            ("gw.state", [header("evil"), vec![0; 27]].concat()),
            ("gw.hb", garbage.clone()),
            ("gw.hb", vec![]),
        ],
    );
    b.expect_silence(Duration::from_millis(500));

    // Both nodes still route, both ways.
    a.data(b.addr, 3, b"still here");
    assert_eq!(b.expect_frame(kind::DATA, 3).payload, b"still here");
    b.data(a.addr, 4, b"and back");
    assert_eq!(a.expect_frame(kind::DATA, 4).payload, b"and back");
}

#[test]
fn ten_thousand_frames_keep_their_order_across_nodes() {
    let nats = Nats::start();
    let [n1, n2, _n3] = three_nodes(&nats);
    let mut a = TcpClient::hello(n1.tcp_addr(), Uuid::new_v4());
    let mut b = TcpClient::hello(n2.tcp_addr(), Uuid::new_v4());
    wait_routable(&mut a, &mut b);
    const N: u64 = 10_000;
    let (a_addr, b_addr) = (a.addr, b.addr);
    let sender = thread::spawn(move || {
        for id in 1..=N {
            a.data(b_addr, id, &id.to_be_bytes());
        }
        a
    });
    for id in 1..=N {
        let f = b.recv();
        assert_eq!(f.kind, kind::DATA, "frame {id}: {f:?}");
        assert_eq!(f.id, id, "frames out of order");
        assert_eq!(f.src, a_addr);
        assert_eq!(f.payload, id.to_be_bytes());
    }
    let mut a = sender.join().expect("sender thread");
    // No error came back for any of them.
    a.expect_silence(Duration::from_millis(300));
}

#[test]
fn a_hello_on_another_node_takes_the_address_over() {
    let nats = Nats::start();
    let [n1, n2, n3] = three_nodes(&nats);
    let x = Uuid::new_v4();
    let mut old = TcpClient::hello(n1.tcp_addr(), x);
    let mut sender = TcpClient::hello(n3.tcp_addr(), Uuid::new_v4());
    wait_routable(&mut sender, &mut old);

    let mut new = TcpClient::hello(n2.tcp_addr(), x);
    old.expect_error_then_close(code::TAKEN_OVER, 0);

    // DATA now reaches the new connection on n2, from n3 and from n1.
    wait_routable(&mut sender, &mut new);
    let mut on_n1 = TcpClient::hello(n1.tcp_addr(), Uuid::new_v4());
    wait_routable(&mut on_n1, &mut new);
    on_n1.data(x, 7, b"to the new one");
    assert_eq!(new.expect_frame(kind::DATA, 7).payload, b"to the new one");
}

#[test]
fn presence_and_state_reach_watchers_on_other_nodes() {
    let nats = Nats::start();
    let [n1, n2, _n3] = three_nodes(&nats);
    let mut watcher = TcpClient::hello(n1.tcp_addr(), Uuid::new_v4());
    let mut probe = TcpClient::hello(n2.tcp_addr(), Uuid::new_v4());
    wait_routable(&mut watcher, &mut probe);

    let x = Uuid::new_v4();
    assert_eq!(watcher.subscribe(x, 10).online, 0);
    let mut device = TcpClient::hello(n2.tcp_addr(), x);
    let p = watcher.expect_frame(kind::PRESENCE, 0).presence();
    assert_eq!((p.address, p.online), (x, 1));

    // A second watcher subscribing now hears "online" at once.
    let mut late = TcpClient::hello(n1.tcp_addr(), Uuid::new_v4());
    let p2 = late.subscribe(x, 11);
    assert_eq!(p2.online, 1);
    assert_eq!(p2.at_us, p.at_us, "online since the same moment");

    // A committed state is pushed to the watchers on n1, online.
    let at = device.put_acked(12, b"{\"t\":21.5}");
    for w in [&mut watcher, &mut late] {
        let s = w.expect_frame(kind::STATE, 0).state();
        assert_eq!((s.address, s.updated_at_us, s.online), (x, at, 1));
        assert_eq!(s.blob, b"{\"t\":21.5}");
    }

    drop(device);
    let off = watcher.expect_frame(kind::PRESENCE, 0).presence();
    assert_eq!((off.address, off.online), (x, 0));
    assert!(off.at_us >= p.at_us);
}

#[test]
fn a_killed_node_s_addresses_go_offline_everywhere() {
    let nats = Nats::start();
    let [n1, n2, _n3] = three_nodes(&nats);
    let mut watcher = TcpClient::hello(n1.tcp_addr(), Uuid::new_v4());
    let mut device = TcpClient::hello(n2.tcp_addr(), Uuid::new_v4());
    wait_routable(&mut watcher, &mut device);
    assert_eq!(watcher.subscribe(device.addr, 20).online, 1);

    let killed = Instant::now();
    drop(n2); // SIGKILL: no goodbye of any kind.
    let off = watcher
        .recv_within(Duration::from_millis(NODE_TIMEOUT_MS) + Duration::from_secs(3))
        .presence();
    assert_eq!((off.address, off.online), (device.addr, 0));
    let took = killed.elapsed();
    assert!(
        took < Duration::from_millis(NODE_TIMEOUT_MS) + Duration::from_secs(2),
        "offline after {took:?}"
    );
    watcher.data(device.addr, 21, b"anyone?");
    watcher.expect_error(code::DST_OFFLINE, 21);
}

#[test]
fn local_routing_survives_a_nats_outage_and_remote_routing_comes_back() {
    let mut nats = Nats::start();
    let [n1, n2, _n3] = three_nodes(&nats);
    let mut a = TcpClient::hello(n1.tcp_addr(), Uuid::new_v4());
    let mut a2 = TcpClient::hello(n1.tcp_addr(), Uuid::new_v4());
    let mut b = TcpClient::hello(n2.tcp_addr(), Uuid::new_v4());
    wait_routable(&mut a, &mut b);

    nats.stop();
    // Same node: unaffected.
    for id in 1..=50 {
        a.data(a2.addr, id, b"local");
        a2.expect_frame(kind::DATA, id);
    }
    // Another node: refused plainly once the link is known to be down.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut id = 100;
    loop {
        assert!(
            Instant::now() < deadline,
            "remote DATA never refused during the outage"
        );
        id += 1;
        a.data(b.addr, id, b"remote");
        match a.poll(Duration::from_millis(500)) {
            Event::Frame(f) => {
                assert_eq!(f.kind, kind::ERROR, "{f:?}");
                assert_eq!(f.error().0, code::DST_OFFLINE, "{f:?}");
                break;
            }
            Event::Silent => {}
            Event::Closed => panic!("closed during the outage"),
        }
    }
    a.heartbeat(5);
    b.heartbeat(6);

    nats.spawn();
    // The nodes reconnect and rejoin by themselves.
    wait_routable(&mut a, &mut b);
    b.data(a.addr, 500, b"back");
    assert_eq!(a.expect_frame(kind::DATA, 500).payload, b"back");
    // The directory was written again: a client new to n1 finds b too.
    let mut fresh = TcpClient::hello(n1.tcp_addr(), Uuid::new_v4());
    wait_routable(&mut fresh, &mut b);
}
