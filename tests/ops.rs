//! The operations pages on the WebSocket port: GET /metrics (Prometheus
//! text) and GET /healthz (JSON), and who may read them.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::{kind, Gateway, TcpClient, WsClient};
use uuid::Uuid;

/// One GET; returns the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .expect("the gateway closes after its answer");
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line in {head:?}"));
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Content-Length in {head:?}"));
    assert_eq!(length, body.len(), "Content-Length matches the body");
    (status, body.to_string())
}

/// The value of the sample `name{labels}` (exact label text) in a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until `ready` holds (shards publish every tick), for up to 3 s.
fn scrape_until(gw: &Gateway, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (status, text) = get(gw.ws_addr(), "/metrics");
        assert_eq!(status, 200);
        if ready(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed it:\n{text}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_count_connections_frames_errors_and_routing() {
    let gw = Gateway::start("[runtime]\nshards = 2");
    let a = Uuid::new_v4();
    let b = Uuid::new_v4();
    let mut ca = TcpClient::hello(gw.tcp_addr(), a);
    let mut cb = TcpClient::hello(gw.tcp_addr(), b);
    let _page = WsClient::hello_json(gw.ws_addr(), Uuid::new_v4());
    for id in 1..=5 {
        ca.data(b, id, b"m");
        cb.expect_frame(kind::DATA, id);
    }
    ca.data(Uuid::new_v4(), 9, b"nobody");
    ca.expect_error(common::code::DST_OFFLINE, 9);

    let text = scrape_until(&gw, |t| {
        sample(t, "gateway_frames_in_total{kind=\"data\"}") == Some(6.0)
            && sample(t, "gateway_errors_total{code=\"dst_offline\"}") == Some(1.0)
    });
    let conns = |transport: &str| -> f64 {
        (0..2)
            .map(|s| {
                let series =
                    format!("gateway_connections{{shard=\"{s}\",transport=\"{transport}\"}}");
                sample(&text, &series).unwrap_or_else(|| panic!("{series} missing"))
            })
            .sum()
    };
    assert_eq!(conns("tcp"), 2.0, "{text}");
    assert_eq!(conns("ws"), 1.0, "{text}");
    assert_eq!(
        sample(&text, "gateway_frames_out_total{kind=\"data\"}"),
        Some(5.0)
    );
    assert_eq!(
        sample(&text, "gateway_frames_in_total{kind=\"hello\"}"),
        Some(3.0)
    );
    let routed: f64 = (0..2)
        .map(|s| {
            sample(
                &text,
                &format!("gateway_routing_latency_seconds_count{{shard=\"{s}\"}}"),
            )
            .unwrap_or(0.0)
        })
        .sum();
    assert_eq!(routed, 5.0, "every delivered DATA observed once:\n{text}");
    assert!(sample(&text, "gateway_process_resident_memory_bytes").unwrap() > 1e6);
    assert_eq!(sample(&text, "gateway_store_up"), Some(1.0));

    // A closed connection leaves the gauge.
    drop(ca);
    scrape_until(&gw, |t| {
        (0..2)
            .map(|s| {
                sample(
                    t,
                    &format!("gateway_connections{{shard=\"{s}\",transport=\"tcp\"}}"),
                )
                .unwrap_or(0.0)
            })
            .sum::<f64>()
            == 1.0
    });
}

#[test]
fn store_commits_show_in_metrics() {
    let gw = Gateway::start("");
    let mut c = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());
    c.put_acked(1, b"{\"t\":21.5}");
    let text = scrape_until(&gw, |t| {
        sample(t, "gateway_store_committed_rows_total").is_some_and(|v| v >= 1.0)
    });
    assert!(sample(&text, "gateway_store_commit_seconds_count").unwrap() >= 1.0);
    assert!(sample(&text, "gateway_store_batch_rows_count").unwrap() >= 1.0);
    assert_eq!(sample(&text, "gateway_store_queued_writes"), Some(0.0));
}

#[test]
fn healthz_reports_shards_and_store() {
    let gw = Gateway::start("[runtime]\nshards = 2");
    let deadline = Instant::now() + Duration::from_secs(3);
    let body = loop {
        let (status, body) = get(gw.ws_addr(), "/healthz");
        if status == 200 {
            break body;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "never healthy: {body}");
        thread::sleep(Duration::from_millis(100));
    };
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["status"], "ok");
    assert_eq!(v["shards"], 2);
    assert_eq!(v["shards_alive"], 2);
    assert_eq!(v["store"], "ok");
}

#[test]
fn ops_pages_are_refused_to_sources_not_allowed_and_other_paths_are_404() {
    let gw = Gateway::start("[http]\nops_allow = [\"10.0.0.0/8\"]");
    assert_eq!(get(gw.ws_addr(), "/metrics").0, 403);
    assert_eq!(get(gw.ws_addr(), "/healthz").0, 403);
    assert_eq!(get(gw.ws_addr(), "/elsewhere").0, 404);
    // The WebSocket endpoint is not affected.
    let mut page = WsClient::hello_json(gw.ws_addr(), Uuid::new_v4());
    page.ping(b"p");
}

/// At debug level every connection's life is logged with structured
/// fields: shard, connection slot, peer, transport, address.
#[test]
fn debug_logs_follow_a_connection_with_its_address() {
    let gw = Gateway::start("[log]\nlevel = \"uring_gateway=debug\"\n[runtime]\nshards = 1");
    let me = Uuid::new_v4();
    let c = TcpClient::hello(gw.tcp_addr(), me);
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let log = gw.stderr_tail();
        let has = |words: &[&str]| log.lines().any(|l| words.iter().all(|w| l.contains(w)));
        let me = me.to_string();
        if has(&["accepted", "peer", "127.0.0.1", "transport", "tcp"])
            && has(&["registered", &me, "transport"])
            && has(&["closed", &me])
        {
            break;
        }
        assert!(Instant::now() < deadline, "lifecycle not logged:\n{log}");
        thread::sleep(Duration::from_millis(50));
    }
}
