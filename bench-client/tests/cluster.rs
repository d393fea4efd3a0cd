//! `pingpong --peer-tcp` against a real two-node cluster: a `nats-server` of
//! the test's own (JetStream, a spare loopback port, a temporary store
//! directory) and two gateway nodes; every pair's a side registers at node 1
//! and its b side at node 2, so every DATA frame and echo crosses nodes.
//!
//! The gateway binary is the root crate's `gateway`, found next to the
//! bench-client binary under test (`cargo test --workspace` builds both; with
//! `-p bench-client` alone build it first with `cargo build --bin gateway`,
//! same profile) or named by `GATEWAY_BIN`.

// Only the runner: this test talks to real gateways, not the relay double.
#[path = "common/run.rs"]
mod run;

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use run::{bench, n, Run};

/// The NATS server binary (Debian's package; `.ci/run` installs it).
const NATS_SERVER: &str = "nats-server";
/// How long nats-server may take to listen, and a node to print its ready line.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the two nodes may take to see each other (connect to NATS, open
/// the directory, hear the other's heartbeats).
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

static DIR_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "bench-client-cluster-{label}-{}-{}",
            std::process::id(),
            DIR_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create a temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a spare port");
    l.local_addr().expect("local addr").port()
}

/// A `nats-server` with JetStream on a spare loopback port.
struct Nats {
    // Declared before the directory: the server stops before it is removed.
    _child: Killed,
    port: u16,
    _dir: TempDir,
}

impl Nats {
    fn start() -> Nats {
        let port = free_port();
        let dir = TempDir::new("nats");
        let child = Command::new(NATS_SERVER)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {NATS_SERVER} (is it installed?): {e}"));
        let nats = Nats {
            _child: Killed(child),
            port,
            _dir: dir,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {addr}"
            );
            thread::sleep(Duration::from_millis(50));
        }
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// The gateway binary: `GATEWAY_BIN`, else next to bench-client.
fn gateway_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("GATEWAY_BIN") {
        return path.into();
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_bench-client")).with_file_name("gateway");
    assert!(
        bin.is_file(),
        "no gateway binary at {} (build it: cargo build [--release] --bin gateway, \
         in the profile of this test; or set GATEWAY_BIN)",
        bin.display()
    );
    bin
}

/// One gateway node: one shard, unpinned, its embedded store and its log in
/// a directory of its own; killed on drop (its log printed if the test fails).
struct Node {
    // Declared before the directory: the node stops before it is removed.
    child: Killed,
    tcp: SocketAddr,
    dir: TempDir,
}

impl Node {
    fn start(nats: &Nats, name: &str) -> Node {
        let dir = TempDir::new(name);
        let config = dir.0.join("gateway.toml");
        fs::write(
            &config,
            "[listen]\ntcp = [\"127.0.0.1:0\"]\nws = [\"127.0.0.1:0\"]\n\
             [runtime]\nshards = 1\npin = false\n\
             [cluster]\nheartbeat_ms = 200\nnode_timeout_ms = 1000\n",
        )
        .expect("write the node's config");
        let log = File::create(dir.0.join("stderr.log")).expect("create the node's log");
        let mut child = Command::new(gateway_bin())
            .arg("--config")
            .arg(&config)
            .args(["--nats-url", &nats.url(), "--node-id", name])
            // The embedded store's default data_dir is relative: here.
            .current_dir(&dir.0)
            .env_remove("GATEWAY_MYSQL_URL")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn the gateway binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut node = Node {
            child: Killed(child),
            tcp: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
        };
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            // Keep reading so the node never blocks on a full pipe.
            lines.for_each(drop);
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            other => panic!("node {name} printed no ready line: {other:?}"),
        };
        // "gateway ready tcp=ADDR[,ADDR] ws=... shards=N"
        let tcp = line
            .split(' ')
            .find_map(|w| w.strip_prefix("tcp="))
            .and_then(|v| v.split(',').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no tcp= in node {name}'s ready line {line:?}"));
        node.tcp = tcp;
        node
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        if thread::panicking() {
            let log = fs::read_to_string(self.dir.0.join("stderr.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(100)..];
            eprintln!(
                "---- node at {} (last lines of its log) ----\n{}",
                self.tcp,
                tail.join("\n")
            );
        }
    }
}

/// A pingpong from node `a` (the target) to node `b` (--peer-tcp).
fn cross_node(a: &Node, b: &Node, pairs: &str, window: &str, duration_s: &str) -> Run {
    let (target, peer) = (a.tcp.to_string(), b.tcp.to_string());
    bench(&[
        "pingpong",
        "--tcp",
        &target,
        "--peer-tcp",
        &peer,
        "--pairs",
        pairs,
        "--window",
        window,
        "--duration-s",
        duration_s,
        "--warmup-s",
        "1",
        "--cpu",
        "1",
    ])
}

/// Whether a run delivered everything it sent, with no error of any kind.
fn clean(run: &Run) -> bool {
    if !run.ok {
        return false;
    }
    let j = run.json();
    n(&j, "delivered") > 0
        && n(&j, "lost") == 0
        && n(&j, "errors_total") == 0
        && j["client_errors"] == serde_json::json!({})
        && j["setup_failures"] == serde_json::json!({})
}

#[test]
fn pingpong_peer_tcp_crosses_two_gateway_nodes() {
    let nats = Nats::start();
    let n1 = Node::start(&nats, "n1");
    let n2 = Node::start(&nats, "n2");

    // The nodes are joined once one small cross-node run comes out clean
    // (before that, DATA for the other node is answered dst_offline).
    let deadline = Instant::now() + JOIN_TIMEOUT;
    while !clean(&cross_node(&n1, &n2, "1", "1", "1")) {
        assert!(
            Instant::now() < deadline,
            "the nodes did not route DATA to each other within {JOIN_TIMEOUT:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }

    let run = cross_node(&n1, &n2, "10", "4", "2");
    assert!(run.ok, "{}", run.stderr);
    let j = run.json();
    assert_eq!(
        (&j["scenario"], &j["target"], &j["transport"]),
        (&"pingpong".into(), &"gateway".into(), &"tcp".into())
    );
    assert_eq!(j["peer"], n2.tcp.to_string(), "{j}");
    assert_eq!(n(&j, "pairs_up"), 10, "{j}");
    assert!(n(&j, "delivered") > 0, "{j}");
    assert_eq!(n(&j, "lost"), 0, "{j}");
    assert_eq!(n(&j, "errors_total"), 0, "{j}");
    assert_eq!(j["client_errors"], serde_json::json!({}), "{j}");
    assert_eq!(j["setup_failures"], serde_json::json!({}), "{j}");
    // Every message a sent came back, echoed by b on the other node.
    assert_eq!(n(&j, "sent"), n(&j, "echoed"), "{j}");
    assert_eq!(n(&j, "sent"), n(&j, "echoes_sent"), "{j}");
    assert!(j["p99_us"].as_f64().unwrap() > 0.0, "{j}");
    assert!(
        run.stdout
            .contains(&format!("{} (a sides at the target)", n2.tcp)),
        "the table names the peer:\n{}",
        run.stdout
    );
}
