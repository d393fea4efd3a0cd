//! Runs `bench-client soak` against the in-process relay double (see
//! `common/mod.rs`) and checks the DATA figures and the spread over several
//! gateway addresses against what the double counted.

mod common;

use std::time::Duration;

use common::run::{bench, n, short_hold};
use common::{RelayOptions, RelayStats};

/// Common soak arguments: short, small, one progress line a second.
fn soak_args<'a>(targets: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    short_hold(
        "soak",
        targets,
        &[&["--progress-s", "1"][..], extra].concat(),
    )
}

#[test]
fn soak_pairs_ping_pong_through_the_relay() {
    let relay = common::start(RelayOptions::default());
    let target = relay.tcp.to_string();
    let run = bench(&soak_args(
        &["--tcp", &target],
        &["--conns", "200", "--data-pairs", "10", "--data-rate", "50"],
    ));
    assert!(run.ok, "{}", run.stderr);
    let j = run.json();
    assert_eq!(j["scenario"], "soak");
    assert_eq!(j["target"], "gateway");
    assert_eq!(n(&j, "up"), 200);
    assert_eq!(n(&j, "failures_total"), 0, "{j}");
    assert_eq!(n(&j, "errors_total"), 0, "{j}");
    assert_eq!(n(&j, "target_ports_used"), 1);
    assert_eq!(n(&j, "source_addrs_used"), 32);
    assert_eq!(n(&j, "data_pairs"), 10);
    let sent = n(&j, "data_sent");
    // 10 pairs x 50/s over about 2 s: about 1000 messages.
    assert!((600..=1200).contains(&sent), "{j}");
    assert_eq!(n(&j, "data_answered"), sent, "{j}");
    assert_eq!(n(&j, "data_echoed"), sent, "{j}");
    assert_eq!(n(&j, "data_msgs"), 2 * sent);
    assert_eq!(n(&j, "data_lost"), 0, "{j}");
    assert_eq!(n(&j, "data_errors_total"), 0, "{j}");
    assert_eq!(j["data_client_errors"], serde_json::json!({}));
    assert_eq!(j["client_errors"], serde_json::json!({}));
    assert_eq!(n(&j, "data_rtt_samples"), sent);
    assert!(j["data_rtt_p50_us"].as_f64().unwrap() > 0.0);
    assert!(j["data_rtt_p99_us"].as_f64() <= j["data_rtt_max_us"].as_f64());
    assert!(j["data_msgs_per_s"].as_f64().unwrap() > 0.0);
    assert!(run.stderr.contains("[soak connect"), "connect progress");
    assert!(run.stderr.contains("msgs/s"), "DATA progress");
    assert!(run.stdout.contains("DATA round trip"), "table row");
    assert!(relay.wait_all_closed(Duration::from_secs(10)));
    let s = &relay.stats;
    assert_eq!(RelayStats::get(&s.data_forwarded), n(&j, "data_msgs"));
    assert_eq!(RelayStats::get(&s.heartbeats), n(&j, "hb_sent"));
    assert_eq!(RelayStats::get(&s.bad_frames), 0);
}

#[test]
fn soak_over_websocket() {
    let relay = common::start(RelayOptions::default());
    let target = relay.ws.to_string();
    let run = bench(&soak_args(
        &["--ws", &target],
        &["--conns", "40", "--data-pairs", "5", "--data-rate", "20"],
    ));
    assert!(run.ok, "{}", run.stderr);
    let j = run.json();
    assert_eq!(j["transport"], "ws");
    assert_eq!(n(&j, "up"), 40);
    let sent = n(&j, "data_sent");
    assert!(sent > 0);
    assert_eq!(n(&j, "data_answered"), sent, "{j}");
    assert_eq!(n(&j, "data_lost"), 0, "{j}");
    assert!(relay.wait_all_closed(Duration::from_secs(10)));
    let s = &relay.stats;
    assert_eq!(RelayStats::get(&s.unmasked_ws_frames), 0);
    assert_eq!(RelayStats::get(&s.bad_frames), 0);
    assert_eq!(RelayStats::get(&s.data_forwarded), n(&j, "data_msgs"));
}

/// Every 7th DATA is answered `slow_consumer`: on a's message that answers
/// it; on b's echo, a gets nothing back and the message counts as lost. All
/// of it shows in the report.
#[test]
fn soak_reports_injected_errors_and_losses() {
    let relay = common::start(RelayOptions {
        error_every: 7,
        ..RelayOptions::default()
    });
    let target = relay.tcp.to_string();
    let run = bench(&soak_args(
        &["--tcp", &target],
        &["--conns", "100", "--data-pairs", "20", "--data-rate", "20"],
    ));
    assert!(run.ok, "{}", run.stderr);
    let j = run.json();
    let errors = n(&j, "data_errors_total");
    assert!(errors > 0, "{j}");
    assert_eq!(j["data_errors"]["slow_consumer"], errors);
    assert_eq!(j["errors"]["slow_consumer"], errors);
    let (sent, answered, refused, lost) = (
        n(&j, "data_sent"),
        n(&j, "data_answered"),
        n(&j, "data_refused"),
        n(&j, "data_lost"),
    );
    assert_eq!(sent, answered + refused + lost, "{j}");
    // Errors not answering a's message answered b's echo: those are lost.
    assert_eq!(lost, errors - refused, "{j}");
    assert!(
        run.stdout.contains("slow_consumer="),
        "table shows the error"
    );
    assert!(relay.wait_all_closed(Duration::from_secs(10)));
    assert_eq!(RelayStats::get(&relay.stats.errors_sent), errors);
}

/// Two "gateway addresses" (two doubles that do not know each other's
/// connections): connections alternate between them, so every pair's b sits
/// on the other double and each message is answered `dst_offline`.
#[test]
fn soak_spreads_over_several_gateway_addresses() {
    let one = common::start(RelayOptions::default());
    let two = common::start(RelayOptions::default());
    let list = format!("{},{}", one.tcp, two.tcp);
    let run = bench(&soak_args(
        &["--tcp", &list],
        &["--conns", "60", "--data-pairs", "3", "--data-rate", "20"],
    ));
    assert!(run.ok, "{}", run.stderr);
    let j = run.json();
    assert_eq!(n(&j, "up"), 60);
    assert_eq!(n(&j, "target_ports_used"), 2);
    assert_eq!(j["up_by_target"], serde_json::json!([30, 30]));
    assert_eq!(
        j["targets"],
        serde_json::json!([one.tcp.to_string(), two.tcp.to_string()])
    );
    let offline = n(&j, "data_refused");
    assert!(offline > 0, "{j}");
    assert_eq!(j["data_errors"]["dst_offline"], offline);
    assert_eq!(n(&j, "data_answered"), 0);
    assert_eq!(n(&j, "data_lost"), 0, "{j}");
    assert!(one.wait_all_closed(Duration::from_secs(10)));
    assert!(two.wait_all_closed(Duration::from_secs(10)));
    assert_eq!(RelayStats::get(&one.stats.hellos), 30);
    assert_eq!(RelayStats::get(&two.stats.hellos), 30);
    // A repeated address is refused before anything connects.
    let again = one.tcp.to_string();
    let run = bench(&["soak", "--tcp", &again, "--tcp", &again, "--conns", "2"]);
    assert!(!run.ok);
    assert!(run.stderr.contains("given twice"), "{}", run.stderr);
    // So are more pairs than the connections hold.
    let run = bench(&["soak", "--tcp", &again, "--conns", "5", "--data-pairs", "3"]);
    assert!(!run.ok);
    assert!(run.stderr.contains("--data-pairs"), "{}", run.stderr);
}
