//! Runs the real `bench-client` binary against the in-process relay double
//! and checks its JSON line against what the double counted.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::run::{bench, n, pingpong, short_hold};
use common::{RelayOptions, RelayStats};
use serde_json::Value;

#[test]
fn pingpong_counts_match_the_relay() {
    let relay = common::start(RelayOptions::default());
    let target = relay.tcp.to_string();
    let run = pingpong("--tcp", &target, 8, 8, 64, 1);
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

/// pingpong over WebSocket, binary and JSON text, against the double: every
/// client frame masked, every echo back, counts equal to the double's.
#[test]
fn pingpong_ws_binary_and_json_counts_match_the_relay() {
    // Payload 8 is short enough to be valid UTF-8 at times (then the double
    // sends it as "payload", otherwise "payload_b64"); 100 never is.
    for (json, payload) in [(false, "64"), (true, "100"), (true, "8")] {
        let relay = common::start(RelayOptions::default());
        let mode = if json { "--json" } else { "" };
        let cmd = format!(
            "pingpong --ws {} {mode} --pairs 4 --window 8 --payload {payload} \
             --duration-s 1 --warmup-s 1",
            relay.ws
        );
        let run = bench(&cmd.split_whitespace().collect::<Vec<_>>());
        assert!(run.ok, "{}", run.stderr);
        let j = run.json();
        let transport = if json { "ws-json" } else { "ws" };
        assert_eq!(
            (&j["target"], &j["transport"]),
            (&"gateway".into(), &transport.into())
        );
        assert_eq!(n(&j, "pairs_up"), 4, "{j}");
        assert!(n(&j, "delivered") > 0, "{j}");
        assert_eq!(n(&j, "errors_total"), 0, "{j}");
        assert_eq!(n(&j, "lost"), 0, "{j}");
        assert_eq!(j["client_errors"], serde_json::json!({}), "{j}");
        assert_eq!(n(&j, "sent"), n(&j, "echoed"));
        assert!(relay.wait_all_closed(Duration::from_secs(10)));
        let s = &relay.stats;
        let delivered = n(&j, "delivered_total");
        // Upgrades, HELLOs, masks, the double's decoding, forwarded DATA.
        let expected = [
            (&s.ws_upgrades, 8),
            (&s.hellos, 8),
            (&s.unmasked_ws_frames, 0),
            (&s.bad_frames, 0),
            (&s.data_forwarded, delivered),
        ];
        for (count, want) in expected {
            assert_eq!(RelayStats::get(count), want, "{j}");
        }
    }
}

#[test]
fn pingpong_reports_injected_errors_and_keeps_its_window() {
    let relay = common::start(RelayOptions {
        error_every: 50,
        ..RelayOptions::default()
    });
    let target = relay.tcp.to_string();
    let run = pingpong("--tcp", &target, 4, 4, 100, 0);
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
    let extra = ["--conns", "300", "--connect-rate", "3000"];
    let run = bench(&short_hold("hold", &["--ws", &target], &extra));
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

/// Serves every connection to a fresh loopback port on a thread of its own,
/// counting those not served to the end yet in `open(stats)`.
fn serve_each<S: Send + Sync + 'static>(
    stats: &Arc<S>,
    open: fn(&S) -> &AtomicU64,
    serve: impl Fn(TcpStream, &S) + Send + Clone + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let st = stats.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            open(&st).fetch_add(1, SeqCst);
            let (st, serve) = (st.clone(), serve.clone());
            std::thread::spawn(move || {
                serve(stream, &st);
                open(&st).fetch_sub(1, SeqCst);
            });
        }
    });
    addr
}

/// Waits (at most 10 s) for a double to see every connection close.
fn wait_all_closed(open: &AtomicU64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while open.load(SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(open.load(SeqCst), 0);
}

/// A minimal NATS server double for `pingpong --nats`, written from the NATS
/// client protocol description independently of the client's `nats.rs`:
/// INFO on connect, CONNECT, SUB, PUB -> MSG to the subscriber, PING/PONG.
/// Every `ping_every`-th PUB it also sends the publisher a PING (the client
/// must answer PONG) and every `err_every`-th an `-ERR 'Test Error'`. With
/// `ping_back` it follows every PONG it sends with a PING of its own.
mod nats_double {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    pub struct Stats {
        pub connects_without_echo_false: AtomicU64,
        pub subs: AtomicU64,
        pub msgs_forwarded: AtomicU64,
        pub pings_sent: AtomicU64,
        pub pings_received: AtomicU64,
        pub pongs_received: AtomicU64,
        pub errs_sent: AtomicU64,
        pub open: AtomicU64,
        pub bad_lines: AtomicU64,
    }

    type Subs = Arc<Mutex<HashMap<String, (Arc<Mutex<TcpStream>>, String)>>>;

    pub fn start(ping_every: u64, err_every: u64, ping_back: bool) -> (SocketAddr, Arc<Stats>) {
        let stats = Arc::new(Stats::default());
        let subs: Subs = Arc::default();
        let addr = super::serve_each(
            &stats,
            |s| &s.open,
            move |stream, st| {
                serve(stream, st, &subs, (ping_every, err_every, ping_back));
            },
        );
        (addr, stats)
    }

    fn serve(stream: TcpStream, st: &Stats, subs: &Subs, opts: (u64, u64, bool)) {
        let (ping_every, err_every, ping_back) = opts;
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
                "PING" => {
                    st.pings_received.fetch_add(1, Ordering::SeqCst);
                    send(&out, b"PONG\r\n");
                    if ping_back {
                        st.pings_sent.fetch_add(1, Ordering::SeqCst);
                        send(&out, b"PING\r\n");
                    }
                }
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
    let (addr, st) = nats_double::start(100, 1000, false);
    let target = addr.to_string();
    let run = pingpong("--nats", &target, 8, 8, 64, 1);
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
    wait_all_closed(&st.open);
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

/// A minimal MQTT 3.1.1 broker double for `hold --mqtt`, written from the
/// specification independently of the client's `mqtt.rs`: CONNACK to
/// CONNECT (noting the keepalive asked for), SUBACK granting QoS 0 to
/// SUBSCRIBE, PINGRESP to PINGREQ; DISCONNECT is counted.
mod mqtt_double {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;

    #[derive(Default)]
    pub struct Stats {
        pub connects: AtomicU64,
        pub keepalive_s: AtomicU64,
        pub subscribes: AtomicU64,
        pub pingreqs: AtomicU64,
        pub disconnects: AtomicU64,
        pub bad_packets: AtomicU64,
        pub open: AtomicU64,
    }

    pub fn start() -> (SocketAddr, Arc<Stats>) {
        let stats = Arc::new(Stats::default());
        let addr = super::serve_each(&stats, |s| &s.open, serve);
        (addr, stats)
    }

    /// One packet: the first byte and the body.
    fn read_packet(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).ok()?;
        let first = byte[0];
        // Remaining length: 7 bits a byte, least significant first.
        let mut len = 0usize;
        for shift in [0, 7, 14, 21] {
            stream.read_exact(&mut byte).ok()?;
            len |= usize::from(byte[0] & 0x7f) << shift;
            if byte[0] & 0x80 == 0 {
                let mut body = vec![0u8; len];
                stream.read_exact(&mut body).ok()?;
                return Some((first, body));
            }
        }
        None
    }

    fn serve(mut stream: TcpStream, st: &Stats) {
        stream.set_nodelay(true).unwrap();
        while let Some((first, body)) = read_packet(&mut stream) {
            let answer = match first {
                0x10 if body.starts_with(&[0, 4, b'M', b'Q', b'T', b'T', 4]) => {
                    st.connects.fetch_add(1, SeqCst);
                    let keepalive = u16::from_be_bytes([body[8], body[9]]);
                    st.keepalive_s.store(u64::from(keepalive), SeqCst);
                    vec![0x20, 2, 0, 0]
                }
                0x82 => {
                    st.subscribes.fetch_add(1, SeqCst);
                    vec![0x90, 3, body[0], body[1], 0]
                }
                0xC0 => {
                    st.pingreqs.fetch_add(1, SeqCst);
                    vec![0xD0, 0]
                }
                0xE0 => {
                    st.disconnects.fetch_add(1, SeqCst);
                    return;
                }
                _ => {
                    st.bad_packets.fetch_add(1, SeqCst);
                    return;
                }
            };
            if stream.write_all(&answer).is_err() {
                return;
            }
        }
    }
}

/// `hold` of `conns` connections against a double at `target` (`flag`:
/// --nats or --mqtt), 1 s heartbeats, held 2 s, with this process as the
/// server whose RSS is read; checks what every such run must show.
fn hold_against_double(flag: &str, target: &str, conns: u64) -> Value {
    let pid = std::process::id();
    let args = format!(
        "hold {flag} {target} --conns {conns} --heartbeat-s 1 --hold-s 2 --settle-s 1 \
         --connect-rate 5000 --server-pid {pid} --cpu 1"
    );
    let run = bench(&args.split_whitespace().collect::<Vec<_>>());
    assert!(run.ok, "{}", run.stderr);
    let j = run.json();
    assert_eq!(j["scenario"], "hold");
    assert_eq!(n(&j, "up"), conns);
    assert_eq!(n(&j, "failures_total"), 0, "{j}");
    assert_eq!(n(&j, "alive_end"), conns);
    assert_eq!(n(&j, "errors_total"), 0, "{j}");
    assert_eq!(j["dropped"], serde_json::json!({}));
    assert_eq!(j["client_errors"], serde_json::json!({}));
    assert!(j["bytes_per_conn"].is_i64(), "{j}");
    let sent = n(&j, "hb_sent");
    // 1 s interval, at least 2 s held: about 2 beats per connection.
    assert!(sent >= conns, "{j}");
    assert!(n(&j, "hb_acked") + conns >= sent, "{j}");
    assert_eq!(n(&j, "hb_missed"), 0, "{j}");
    j
}

#[test]
fn hold_nats_registers_heartbeats_and_answers_server_pings() {
    let (addr, st) = nats_double::start(0, 0, true);
    let j = hold_against_double("--nats", &addr.to_string(), 50);
    assert_eq!(
        (j["target"].as_str(), j["transport"].as_str()),
        (Some("nats"), Some("nats"))
    );
    wait_all_closed(&st.open);
    let load = |c: &AtomicU64| c.load(SeqCst);
    let seen = [&st.subs, &st.connects_without_echo_false, &st.bad_lines].map(load);
    assert_eq!(seen, [50, 0, 0], "SUBs, CONNECTs with echo, bad lines");
    // The setup's PING, then the heartbeats.
    assert_eq!(load(&st.pings_received), 50 + n(&j, "hb_sent"));
    // Every PONG the double sent is followed by a PING; the client answers
    // all but at most the last one of each connection (sent as it closed).
    let (pings, pongs) = (load(&st.pings_sent), load(&st.pongs_received));
    assert!(pongs <= pings && pings - pongs <= 50, "{pings} {pongs}");
    assert!(pongs >= 50, "the setup's PING is answered too: {pongs}");
}

#[test]
fn hold_mqtt_registers_with_keepalive_and_pings() {
    let (addr, st) = mqtt_double::start();
    let j = hold_against_double("--mqtt", &addr.to_string(), 40);
    assert_eq!(
        (j["target"].as_str(), j["transport"].as_str()),
        (Some("mosquitto"), Some("mqtt"))
    );
    // Three heartbeat intervals.
    assert_eq!(n(&j, "mqtt_keepalive_s"), 3);
    wait_all_closed(&st.open);
    let load = |c: &AtomicU64| c.load(SeqCst);
    assert_eq!(load(&st.keepalive_s), 3);
    assert_eq!(load(&st.pingreqs), n(&j, "hb_sent"));
    // Told to stop, every connection says goodbye.
    let seen = [
        &st.connects,
        &st.subscribes,
        &st.disconnects,
        &st.bad_packets,
    ]
    .map(load);
    assert_eq!(
        seen,
        [40, 40, 40, 0],
        "CONNECTs, SUBSCRIBEs, DISCONNECTs, bad"
    );
}

#[test]
fn peer_targets_only_where_they_work() {
    // Refused before any socket opens, so the addresses need no server.
    let cases: [(&[&str], &str); 2] = [
        (
            &["soak", "--nats", "127.0.0.1:4222", "--conns", "4"],
            "soak runs against the gateway only",
        ),
        (
            &["hold", "--mqtt", "127.0.0.1:1883", "--token", "t"],
            "--token is only for the gateway",
        ),
    ];
    for (args, why) in cases {
        let run = bench(args);
        assert!(
            !run.ok && run.stderr.contains(why),
            "{args:?}: {}",
            run.stderr
        );
    }
}

#[test]
fn fan_counts_match_the_relay() {
    let relay = common::start(RelayOptions::default());
    let target = relay.tcp.to_string();
    // Fan-in: 6 senders, 3 receivers, 6 streams; a receiver has two.
    let run = bench(&[
        "fan",
        "--tcp",
        &target,
        "--senders",
        "6",
        "--receivers",
        "3",
        "--window",
        "8",
        "--duration-s",
        "2",
        "--warmup-s",
        "1",
        "--cpu",
        "1",
    ]);
    assert!(run.ok, "{}", run.stderr);
    let j = run.json();
    assert_eq!(j["scenario"], "fan");
    assert_eq!(j["target"], "gateway");
    assert_eq!((n(&j, "streams"), n(&j, "streams_up")), (6, 6));
    assert_eq!(n(&j, "credit_every"), 4);
    assert!(n(&j, "delivered") > 0);
    assert!(j["p50_us"].as_f64().unwrap() > 0.0);
    assert!(j["p99_us"].as_f64() <= j["max_us"].as_f64());
    assert_eq!(n(&j, "errors_total"), 0, "{j}");
    assert_eq!(n(&j, "lost"), 0, "{j}");
    assert_eq!(n(&j, "seq_gaps"), 0, "{j}");
    assert_eq!(j["client_errors"], serde_json::json!({}));
    assert_eq!(n(&j, "sent"), n(&j, "delivered_total"));
    // Every credit came back, and every DATA the relay forwarded was either
    // a message or a credit.
    assert_eq!(n(&j, "credits_sent"), n(&j, "credits_received"));
    assert!(n(&j, "credits_sent") >= n(&j, "delivered_total") / 4 - 6);
    assert!(relay.wait_all_closed(Duration::from_secs(10)));
    let s = &relay.stats;
    assert_eq!(
        RelayStats::get(&s.data_forwarded),
        n(&j, "delivered_total") + n(&j, "credits_received")
    );
    assert_eq!(RelayStats::get(&s.hellos), 9);
    assert_eq!(RelayStats::get(&s.bad_frames), 0);
}

#[test]
fn fan_reports_injected_errors_and_never_stalls() {
    let relay = common::start(RelayOptions {
        error_every: 40,
        ..RelayOptions::default()
    });
    let target = relay.tcp.to_string();
    // Fan-out, window 2: every frame is credited, so credits are refused
    // too, and a credit not sent again would stall its stream.
    let run = bench(&[
        "fan",
        "--tcp",
        &target,
        "--senders",
        "2",
        "--receivers",
        "5",
        "--window",
        "2",
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
    assert_eq!(n(&j, "errors_total"), slow);
    assert_eq!(n(&j, "refused") + n(&j, "credits_refused"), slow, "{j}");
    assert!(n(&j, "refused") > 0 && n(&j, "credits_refused") > 0, "{j}");
    assert_eq!(n(&j, "lost"), 0, "{j}");
    assert_eq!(n(&j, "sent"), n(&j, "delivered_total") + n(&j, "refused"));
    assert_eq!(j["client_errors"], serde_json::json!({}));
    assert!(relay.wait_all_closed(Duration::from_secs(10)));
    assert_eq!(RelayStats::get(&relay.stats.errors_sent), slow);
    assert_eq!(
        RelayStats::get(&relay.stats.data_forwarded),
        n(&j, "delivered_total") + n(&j, "credits_received")
    );
    // Refused credits were sent again, so the windows kept moving: with 40
    // messages per error, far more than 40 x 5 frames got through.
    assert!(n(&j, "delivered_total") > 2000, "{j}");
    assert!(
        run.stdout.contains("slow_consumer="),
        "table shows the error"
    );
}

#[test]
fn churn_handshakes_match_the_relay() {
    let relay = common::start(RelayOptions::default());
    for (flag, target) in [("--tcp", relay.tcp), ("--ws", relay.ws)] {
        let target = target.to_string();
        let run = bench(&[
            "churn",
            flag,
            &target,
            "--concurrency",
            "8",
            "--duration-s",
            "1",
            "--cpu",
            "1",
        ]);
        assert!(run.ok, "{}", run.stderr);
        let j = run.json();
        assert_eq!(j["scenario"], "churn");
        assert_eq!(j["transport"], &flag[2..]);
        assert!(n(&j, "handshakes") > 0, "{j}");
        assert_eq!(n(&j, "failures_total"), 0, "{j}");
        assert_eq!(n(&j, "no_local_port"), 0);
        assert!(j["p50_us"].as_f64().unwrap() > 0.0);
    }
    assert!(relay.wait_all_closed(Duration::from_secs(10)));
    let s = &relay.stats;
    // Every connection said HELLO once and was closed by the client; the
    // WebSocket ones were upgraded first.
    assert_eq!(RelayStats::get(&s.hellos), RelayStats::get(&s.accepted));
    assert!(RelayStats::get(&s.ws_upgrades) > 0);
    assert_eq!(RelayStats::get(&s.unmasked_ws_frames), 0);
    assert_eq!(RelayStats::get(&s.bad_frames), 0);
}

#[test]
fn churn_counts_refused_connects() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("127.0.0.1:{port}");
    let run = bench(&[
        "churn",
        "--tcp",
        &target,
        "--concurrency",
        "4",
        "--duration-s",
        "1",
        "--cpu",
        "1",
    ]);
    assert!(run.ok, "{}", run.stderr);
    let j = run.json();
    assert_eq!(n(&j, "handshakes"), 0);
    let refused = n(&j["failures"], "connect_refused");
    assert!(refused > 0 && refused == n(&j, "failures_total"), "{j}");
    // Failed loops pause before trying again: no busy loop.
    assert!(refused < 4 * 200, "{j}");
}
