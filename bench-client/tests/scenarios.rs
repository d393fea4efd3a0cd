//! Runs the real `bench-client` binary against the in-process relay double
//! and checks its JSON line against what the double counted.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{RelayOptions, RelayStats};
use serde_json::Value;

/// A bench run that takes longer than this is killed and the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(90);

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        let last = self.stdout.lines().last().unwrap_or("");
        assert!(
            last.starts_with("{\"scenario\""),
            "no JSON line:\n{}\n{}",
            self.stdout,
            self.stderr
        );
        serde_json::from_str(last).expect("valid JSON line")
    }
}

fn bench(args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bench-client"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bench-client");
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bench-client {args:?} ran longer than {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    print!("{stdout}");
    eprint!("{stderr}");
    Run {
        ok: status.success(),
        stdout,
        stderr,
    }
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing or not a count in {v}"))
}

#[test]
fn pingpong_counts_match_the_relay() {
    let relay = common::start(RelayOptions::default());
    let target = relay.tcp.to_string();
    let run = bench(&[
        "pingpong",
        "--tcp",
        &target,
        "--pairs",
        "8",
        "--window",
        "8",
        "--payload",
        "64",
        "--duration-s",
        "2",
        "--warmup-s",
        "1",
        "--cpu",
        "1",
    ]);
    assert!(run.ok, "{}", run.stderr);
    let j = run.json();
    assert_eq!(j["scenario"], "pingpong");
    assert_eq!(j["target"], "gateway");
    assert_eq!(n(&j, "pairs_up"), 8);
    assert!(n(&j, "delivered") > 0);
    assert!(j["msgs_per_s"].as_f64().unwrap() > 0.0);
    assert!(j["p50_us"].as_f64().unwrap() > 0.0);
    assert!(j["p50_us"].as_f64() <= j["p99_us"].as_f64());
    assert!(j["p99_us"].as_f64() <= j["max_us"].as_f64());
    assert_eq!(n(&j, "errors_total"), 0, "{j}");
    assert_eq!(n(&j, "lost"), 0, "{j}");
    assert_eq!(j["client_errors"], serde_json::json!({}));
    assert_eq!(j["setup_failures"], serde_json::json!({}));
    // Every DATA the relay forwarded reached a client, and nothing else did.
    assert!(relay.wait_all_closed(Duration::from_secs(10)));
    let s = &relay.stats;
    assert_eq!(RelayStats::get(&s.data_forwarded), n(&j, "delivered_total"));
    assert_eq!(
        n(&j, "sent") + n(&j, "echoes_sent"),
        n(&j, "delivered_total")
    );
    assert_eq!(n(&j, "sent"), n(&j, "echoed"));
    assert_eq!(RelayStats::get(&s.hellos), 16);
    assert_eq!(RelayStats::get(&s.bad_frames), 0);
}

#[test]
fn pingpong_reports_injected_errors_and_keeps_its_window() {
    let relay = common::start(RelayOptions {
        error_every: 50,
        ..RelayOptions::default()
    });
    let target = relay.tcp.to_string();
    let run = bench(&[
        "pingpong",
        "--tcp",
        &target,
        "--pairs",
        "4",
        "--window",
        "4",
        "--payload",
        "100",
        "--duration-s",
        "2",
        "--warmup-s",
        "0",
        "--cpu",
        "1",
    ]);
    assert!(run.ok, "{}", run.stderr);
    let j = run.json();
    let slow = j["errors"]["slow_consumer"]
        .as_u64()
        .expect("slow_consumer counted");
    assert!(slow > 0);
    assert_eq!(n(&j, "errors_total"), slow);
    assert_eq!(n(&j, "lost"), 0, "{j}");
    assert!(n(&j, "delivered") > 0);
    assert!(relay.wait_all_closed(Duration::from_secs(10)));
    assert_eq!(RelayStats::get(&relay.stats.errors_sent), slow);
    assert_eq!(
        RelayStats::get(&relay.stats.data_forwarded),
        n(&j, "delivered_total")
    );
    assert!(
        run.stdout.contains("slow_consumer="),
        "table shows the error"
    );
}

#[test]
fn hold_tcp_keeps_every_connection() {
    let relay = common::start(RelayOptions::default());
    let target = relay.tcp.to_string();
    let pid = std::process::id().to_string();
    let run = bench(&[
        "hold",
        "--tcp",
        &target,
        "--conns",
        "2000",
        "--heartbeat-s",
        "1",
        "--hold-s",
        "3",
        "--settle-s",
        "1",
        "--connect-rate",
        "5000",
        "--gateway-pid",
        &pid,
        "--cpu",
        "1",
    ]);
    assert!(run.ok, "{}", run.stderr);
    let j = run.json();
    assert_eq!(j["scenario"], "hold");
    assert_eq!(j["transport"], "tcp");
    assert_eq!(n(&j, "up"), 2000);
    assert_eq!(n(&j, "failures_total"), 0, "{j}");
    assert_eq!(n(&j, "alive_end"), 2000);
    assert_eq!(n(&j, "errors_total"), 0);
    assert_eq!(j["dropped"], serde_json::json!({}));
    assert!(j["bytes_per_conn"].is_i64(), "{j}");
    assert!(n(&j, "rss_loaded_bytes") > 0);
    let sent = n(&j, "hb_sent");
    // 2000 connections, 1 s interval, at least 3 s held: about 6000 beats.
    assert!(sent >= 4000, "{j}");
    assert!(n(&j, "hb_acked") + 2000 >= sent);
    assert!(run.stderr.contains("[hold connect"), "progress printed");
    assert!(relay.wait_all_closed(Duration::from_secs(10)));
    assert_eq!(RelayStats::get(&relay.stats.hellos), 2000);
    assert_eq!(RelayStats::get(&relay.stats.heartbeats), sent);
}

#[test]
fn hold_ws_masks_and_keeps_every_connection() {
    let relay = common::start(RelayOptions::default());
    let target = relay.ws.to_string();
    let run = bench(&[
        "hold",
        "--ws",
        &target,
        "--conns",
        "300",
        "--heartbeat-s",
        "1",
        "--hold-s",
        "2",
        "--settle-s",
        "1",
        "--connect-rate",
        "3000",
        "--cpu",
        "1",
    ]);
    assert!(run.ok, "{}", run.stderr);
    let j = run.json();
    assert_eq!(j["transport"], "ws");
    assert_eq!(n(&j, "up"), 300);
    assert_eq!(n(&j, "failures_total"), 0, "{j}");
    assert_eq!(n(&j, "alive_end"), 300);
    assert!(j["rss_loaded_bytes"].is_null(), "no --gateway-pid, no RSS");
    assert!(n(&j, "hb_acked") > 0);
    assert!(relay.wait_all_closed(Duration::from_secs(10)));
    let s = &relay.stats;
    assert_eq!(RelayStats::get(&s.ws_upgrades), 300);
    assert_eq!(RelayStats::get(&s.hellos), 300);
    assert_eq!(RelayStats::get(&s.unmasked_ws_frames), 0);
    assert_eq!(RelayStats::get(&s.bad_frames), 0);
    assert_eq!(RelayStats::get(&s.heartbeats), n(&j, "hb_sent"));
}

#[test]
fn hold_counts_refused_hellos_by_reason() {
    let relay = common::start(RelayOptions {
        refuse_hello: true,
        ..RelayOptions::default()
    });
    let target = relay.tcp.to_string();
    let run = bench(&[
        "hold",
        "--tcp",
        &target,
        "--conns",
        "20",
        "--hold-s",
        "1",
        "--settle-s",
        "0",
        "--cpu",
        "1",
    ]);
    assert!(run.ok, "{}", run.stderr);
    let j = run.json();
    assert_eq!(n(&j, "up"), 0);
    assert_eq!(j["failures"]["error_auth_failed"], 20);
    assert_eq!(j["errors"]["auth_failed"], 20);
}

#[test]
fn hold_counts_refused_connects() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("127.0.0.1:{port}");
    let run = bench(&[
        "hold",
        "--tcp",
        &target,
        "--conns",
        "10",
        "--hold-s",
        "1",
        "--settle-s",
        "0",
        "--cpu",
        "1",
    ]);
    assert!(run.ok, "{}", run.stderr);
    let j = run.json();
    assert_eq!(n(&j, "up"), 0);
    assert_eq!(j["failures"]["connect_refused"], 10);
}

#[test]
fn refuses_targets_outside_loopback() {
    for target in ["10.0.0.1:7000", "192.168.0.10:7000", "[::1]:7000"] {
        let run = bench(&["hold", "--tcp", target, "--conns", "1", "--hold-s", "1"]);
        assert!(!run.ok);
        assert!(run.stderr.contains("refusing target"), "{}", run.stderr);
        let run = bench(&[
            "pingpong",
            "--tcp",
            target,
            "--pairs",
            "1",
            "--duration-s",
            "1",
        ]);
        assert!(!run.ok);
        assert!(run.stderr.contains("refusing target"), "{}", run.stderr);
    }
}

/// A minimal NATS server double for `pingpong --nats`, written from the NATS
/// client protocol description independently of the client's `nats.rs`:
/// INFO on connect, CONNECT, SUB, PUB -> MSG to the subscriber, PING/PONG.
/// Every `ping_every`-th PUB it also sends the publisher a PING (the client
/// must answer PONG) and every `err_every`-th an `-ERR 'Test Error'`.
mod nats_double {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    pub struct Stats {
        pub connects_without_echo_false: AtomicU64,
        pub subs: AtomicU64,
        pub msgs_forwarded: AtomicU64,
        pub pings_sent: AtomicU64,
        pub pongs_received: AtomicU64,
        pub errs_sent: AtomicU64,
        pub open: AtomicU64,
        pub bad_lines: AtomicU64,
    }

    type Subs = Arc<Mutex<HashMap<String, (Arc<Mutex<TcpStream>>, String)>>>;

    pub fn start(ping_every: u64, err_every: u64) -> (SocketAddr, Arc<Stats>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        let subs: Subs = Arc::default();
        let st = stats.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                st.open.fetch_add(1, Ordering::SeqCst);
                let (st, subs) = (st.clone(), subs.clone());
                std::thread::spawn(move || {
                    serve(stream, &st, &subs, ping_every, err_every);
                    st.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (addr, stats)
    }

    fn serve(stream: TcpStream, st: &Stats, subs: &Subs, ping_every: u64, err_every: u64) {
        stream.set_nodelay(true).unwrap();
        let out = Arc::new(Mutex::new(stream.try_clone().unwrap()));
        let send = |w: &Arc<Mutex<TcpStream>>, bytes: &[u8]| {
            let _ = w.lock().unwrap().write_all(bytes);
        };
        send(
            &out,
            b"INFO {\"server_id\":\"double\",\"max_payload\":1048576}\r\n",
        );
        let mut rd = BufReader::new(stream);
        let mut line = String::new();
        let mut pubs = 0u64;
        loop {
            line.clear();
            match rd.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let Some(l) = line.strip_suffix("\r\n") else {
                st.bad_lines.fetch_add(1, Ordering::SeqCst);
                return;
            };
            let parts: Vec<&str> = l.split(' ').collect();
            match parts[0] {
                "CONNECT" => {
                    if !l.contains("\"echo\":false") {
                        st.connects_without_echo_false
                            .fetch_add(1, Ordering::SeqCst);
                    }
                }
                "SUB" if parts.len() == 3 => {
                    st.subs.fetch_add(1, Ordering::SeqCst);
                    subs.lock()
                        .unwrap()
                        .insert(parts[1].to_string(), (out.clone(), parts[2].to_string()));
                }
                "PING" => send(&out, b"PONG\r\n"),
                "PONG" => {
                    st.pongs_received.fetch_add(1, Ordering::SeqCst);
                }
                "PUB" if parts.len() == 3 => {
                    let len: usize = parts[2].parse().unwrap();
                    let mut payload = vec![0u8; len + 2];
                    if rd.read_exact(&mut payload).is_err() {
                        return;
                    }
                    let to = subs.lock().unwrap().get(parts[1]).cloned();
                    if let Some((w, sid)) = to {
                        let mut msg = format!("MSG {} {} {}\r\n", parts[1], sid, len).into_bytes();
                        msg.extend_from_slice(&payload);
                        send(&w, &msg);
                        st.msgs_forwarded.fetch_add(1, Ordering::SeqCst);
                    }
                    pubs += 1;
                    if ping_every > 0 && pubs.is_multiple_of(ping_every) {
                        st.pings_sent.fetch_add(1, Ordering::SeqCst);
                        send(&out, b"PING\r\n");
                    }
                    if err_every > 0 && pubs.is_multiple_of(err_every) {
                        st.errs_sent.fetch_add(1, Ordering::SeqCst);
                        send(&out, b"-ERR 'Test Error'\r\n");
                    }
                }
                _ => {
                    st.bad_lines.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

#[test]
fn pingpong_nats_counts_match_the_double() {
    use std::sync::atomic::Ordering::SeqCst;
    let (addr, st) = nats_double::start(100, 1000);
    let target = addr.to_string();
    let run = bench(&[
        "pingpong",
        "--nats",
        &target,
        "--pairs",
        "8",
        "--window",
        "8",
        "--payload",
        "64",
        "--duration-s",
        "2",
        "--warmup-s",
        "1",
        "--cpu",
        "1",
    ]);
    assert!(run.ok, "{}", run.stderr);
    let j = run.json();
    assert_eq!(j["scenario"], "pingpong");
    assert_eq!(j["target"], "nats");
    assert_eq!(j["transport"], "nats");
    assert_eq!(n(&j, "pairs_up"), 8);
    assert!(n(&j, "delivered") > 0);
    assert!(j["p50_us"].as_f64().unwrap() > 0.0);
    assert_eq!(n(&j, "lost"), 0, "{j}");
    assert_eq!(j["client_errors"], serde_json::json!({}));
    assert_eq!(j["setup_failures"], serde_json::json!({}));
    // Wait for the double to see every connection close.
    let deadline = Instant::now() + Duration::from_secs(10);
    while st.open.load(SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(st.open.load(SeqCst), 0);
    assert_eq!(st.subs.load(SeqCst), 16);
    assert_eq!(st.connects_without_echo_false.load(SeqCst), 0);
    assert_eq!(st.bad_lines.load(SeqCst), 0);
    assert_eq!(st.msgs_forwarded.load(SeqCst), n(&j, "delivered_total"));
    assert_eq!(
        n(&j, "sent") + n(&j, "echoes_sent"),
        n(&j, "delivered_total")
    );
    assert_eq!(n(&j, "sent"), n(&j, "echoed"));
    // Server PINGs were answered and -ERRs counted by their text. A PING or
    // -ERR sent after a connection's last message may reach a client that
    // has already finished: at most one of each per connection.
    let (pings, pongs) = (st.pings_sent.load(SeqCst), st.pongs_received.load(SeqCst));
    assert!(
        pongs > 0 && pongs <= pings && pings - pongs <= 16,
        "{pings} {pongs}"
    );
    let (errs, counted) = (st.errs_sent.load(SeqCst), n(&j, "errors_total"));
    assert!(
        counted > 0 && counted <= errs && errs - counted <= 16,
        "{errs} {j}"
    );
    assert_eq!(j["errors"]["Test Error"], counted);
}
