//! `churn`, `hold` and `soak` with `--tls` against the relay double's TLS and
//! WSS ports (rustls, a self-signed certificate): the same checks as over
//! plain TCP, plus what the TLS handshakes were on both sides.

mod common;

use std::time::Duration;

use common::run::{bench, n, short_hold};
use common::{Relay, RelayOptions, RelayStats};
use serde_json::Value;

/// A 1 s churn of `loops` loops against `target` (`--tcp` or `--ws`) with
/// TLS and the given extra flags.
fn churn_tls(flag: &str, target: &str, loops: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "churn",
        flag,
        target,
        "--tls",
        "--concurrency",
        loops,
        "--duration-s",
        "1",
        "--cpu",
        "1",
    ];
    args.extend(extra);
    let run = bench(&args);
    assert!(run.ok, "{}", run.stderr);
    run.json()
}

/// Checks the relay's side once every connection has ended: each of the
/// `accepted` connections finished its TLS handshake and said HELLO inside
/// it, none failed, every WebSocket frame was masked and every frame made
/// sense.
fn assert_all_tls(relay: &Relay, accepted: u64) {
    assert!(relay.wait_all_closed(Duration::from_secs(10)));
    let s = &relay.stats;
    assert_eq!(RelayStats::get(&s.accepted), accepted);
    assert_eq!(RelayStats::get(&s.tls_handshakes), accepted);
    assert_eq!(RelayStats::get(&s.hellos), accepted);
    assert_eq!(RelayStats::get(&s.tls_failed), 0);
    assert_eq!(RelayStats::get(&s.unmasked_ws_frames), 0);
    assert_eq!(RelayStats::get(&s.bad_frames), 0);
}

/// The relay's TLS ports and the transport name each should report.
fn tls_ports(relay: &Relay) -> [(&'static str, String, &'static str); 2] {
    [
        ("--tcp", relay.tls.to_string(), "tls"),
        ("--ws", relay.wss.to_string(), "wss"),
    ]
}

#[test]
fn churn_tls_counts_full_handshakes_over_tcp_and_ws() {
    let relay = common::start(RelayOptions::default());
    let ca = relay.ca.to_str().unwrap();
    let mut done = 0;
    for (flag, target, transport) in tls_ports(&relay) {
        let j = churn_tls(flag, &target, "4", &["--ca", ca]);
        assert_eq!(j["scenario"], "churn");
        assert_eq!(j["transport"], transport);
        let handshakes = n(&j, "handshakes");
        assert!(handshakes > 0, "{j}");
        assert_eq!(n(&j, "failures_total"), 0, "{j}");
        let tls = &j["tls"];
        assert_eq!(tls["verify"], "ca");
        assert_eq!(tls["server_name"], "localhost");
        assert_eq!(tls["resume"], false);
        assert_eq!(tls["version"], "TLSv1_3", "{j}");
        assert_eq!(n(tls, "handshakes_full"), handshakes);
        assert_eq!(n(tls, "handshakes_resumed"), 0);
        done += handshakes;
    }
    assert!(relay.wait_all_closed(Duration::from_secs(10)));
    // The relay also counts the handshakes that finished after the end.
    let accepted = RelayStats::get(&relay.stats.accepted);
    assert!(accepted >= done);
    assert_all_tls(&relay, accepted);
    assert_eq!(RelayStats::get(&relay.stats.tls_resumed), 0);
    assert!(RelayStats::get(&relay.stats.ws_upgrades) > 0);
}

#[test]
fn churn_tls_resume_counts_resumed_handshakes() {
    let relay = common::start(RelayOptions::default());
    let target = relay.tls.to_string();
    let ca = relay.ca.to_str().unwrap();
    let j = churn_tls("--tcp", &target, "2", &["--ca", ca, "--resume"]);
    assert_eq!(n(&j, "failures_total"), 0, "{j}");
    let tls = &j["tls"];
    assert_eq!(tls["resume"], true);
    let resumed = n(tls, "handshakes_resumed");
    assert!(resumed > 0, "{j}");
    assert_eq!(n(tls, "handshakes_full") + resumed, n(&j, "handshakes"));
    assert!(relay.wait_all_closed(Duration::from_secs(10)));
    // The relay also counts the handshakes that finished after the end.
    assert!(RelayStats::get(&relay.stats.tls_resumed) >= resumed);
}

#[test]
fn churn_tls_refuses_a_wrong_name_unless_insecure() {
    let relay = common::start(RelayOptions::default());
    let target = relay.tls.to_string();
    let ca = relay.ca.to_str().unwrap();
    let wrong = ["--server-name", "other.test"];
    let j = churn_tls("--tcp", &target, "2", &[&["--ca", ca][..], &wrong].concat());
    assert_eq!(n(&j, "handshakes"), 0, "{j}");
    let refused = n(&j["failures"], "tls_invalid_certificate");
    assert!(refused > 0 && refused == n(&j, "failures_total"), "{j}");
    assert_eq!(n(&j["tls"], "handshakes_full"), 0);

    let j = churn_tls(
        "--tcp",
        &target,
        "2",
        &[&["--insecure"][..], &wrong].concat(),
    );
    assert!(n(&j, "handshakes") > 0, "{j}");
    assert_eq!(n(&j, "failures_total"), 0, "{j}");
    assert_eq!(j["tls"]["verify"], "insecure");
    assert!(relay.wait_all_closed(Duration::from_secs(10)));
    assert!(RelayStats::get(&relay.stats.tls_failed) >= refused);
}

#[test]
fn hold_tls_keeps_every_connection_over_tcp_and_ws() {
    let relay = common::start(RelayOptions::default());
    let ca = relay.ca.to_str().unwrap();
    let pid = std::process::id().to_string();
    for (flag, target, transport) in tls_ports(&relay) {
        let tls = ["--tls", "--ca", ca, "--conns", "200", "--server-pid", &pid];
        let run = bench(&short_hold("hold", &[flag, &target], &tls));
        assert!(run.ok, "{}", run.stderr);
        let j = run.json();
        assert_eq!(j["scenario"], "hold");
        assert_eq!(j["transport"], transport);
        assert_eq!(n(&j, "up"), 200, "{j}");
        assert_eq!(n(&j, "failures_total"), 0, "{j}");
        assert_eq!(n(&j, "alive_end"), 200, "{j}");
        assert_eq!(n(&j, "errors_total"), 0);
        assert!(n(&j, "hb_acked") > 0, "{j}");
        assert!(j["bytes_per_conn"].is_i64(), "{j}");
        assert!(j["client_bytes_per_conn"].is_i64(), "{j}");
        assert_eq!(n(&j["tls"], "handshakes_full"), 200);
        assert!(run.stdout.contains("TLS"), "table row");
    }
    assert_all_tls(&relay, 400);
    assert_eq!(RelayStats::get(&relay.stats.ws_upgrades), 200);
}

#[test]
fn soak_tls_carries_data() {
    let relay = common::start(RelayOptions::default());
    let target = relay.tls.to_string();
    let data = ["--data-pairs", "5", "--data-rate", "20"];
    let tls = [&["--tls", "--insecure", "--conns", "40"][..], &data].concat();
    let run = bench(&short_hold("soak", &["--tcp", &target], &tls));
    assert!(run.ok, "{}", run.stderr);
    let j = run.json();
    assert_eq!(j["scenario"], "soak");
    assert_eq!(j["transport"], "tls");
    assert_eq!(n(&j, "up"), 40, "{j}");
    let sent = n(&j, "data_sent");
    assert!(sent > 0, "{j}");
    assert_eq!(n(&j, "data_echoed"), sent, "{j}");
    assert_eq!(n(&j, "data_lost"), 0, "{j}");
    assert_all_tls(&relay, 40);
    assert_eq!(
        RelayStats::get(&relay.stats.data_forwarded),
        n(&j, "data_msgs")
    );
}
