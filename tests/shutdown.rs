//! Graceful shutdown on SIGTERM and SIGINT.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::json::get_uuid;
use common::{code, kind, Gateway, TcpClient, WsClient, NIL};
use uuid::Uuid;

/// How long a graceful shutdown may take.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long after exit the listening ports may still take a connection: the
/// kernel tears an io_uring instance down asynchronously after the process
/// is gone, and an accept still queued there keeps its listener open until
/// then.
const PORT_RELEASE_TIMEOUT: Duration = Duration::from_secs(1);

/// Pause between connection attempts while waiting for a port to close.
const PORT_RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Asserts that `addr` refuses connections, allowing the kernel a moment
/// to release the sockets of the exited process.
fn assert_refused(addr: SocketAddr) {
    let deadline = Instant::now() + PORT_RELEASE_TIMEOUT;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Err(_) => return,
            Ok(stream) => drop(stream),
        }
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts connections {PORT_RELEASE_TIMEOUT:?} after the gateway exited"
        );
        thread::sleep(PORT_RETRY_PAUSE);
    }
}

#[test]
fn sigterm_sends_shutting_down_to_every_connection_and_exits_zero() {
    let mut gw = Gateway::start("");
    let (tcp_listen, ws_listen) = (gw.tcp_addr(), gw.ws_addr());

    let tcp_addr = Uuid::new_v4();
    let mut tcp = TcpClient::hello(tcp_listen, tcp_addr);
    let page_addr = Uuid::new_v4();
    let mut page = WsClient::hello_json(ws_listen, page_addr);
    let mut binary_page = WsClient::hello_binary(ws_listen, Uuid::new_v4());
    // An unregistered connection, known to be accepted because it was
    // answered.
    let mut unregistered = TcpClient::connect(tcp_listen);
    unregistered.send(kind::HEARTBEAT, Uuid::new_v4(), NIL, 1, b"");
    unregistered.expect_error(code::NOT_REGISTERED, 1);

    let signalled = Instant::now();
    gw.signal(libc::SIGTERM);

    let error = tcp.expect_error(code::SHUTTING_DOWN, 0);
    assert_eq!(error.src, NIL);
    assert_eq!(error.dst, tcp_addr);
    tcp.expect_closed();

    let error = page.expect_json_error(code::SHUTTING_DOWN, 0);
    assert_eq!(get_uuid(&error, "src"), NIL);
    assert_eq!(get_uuid(&error, "dst"), page_addr);
    page.expect_closed();

    binary_page.expect_binary_error(code::SHUTTING_DOWN, 0);
    binary_page.expect_closed();

    let error = unregistered.expect_error(code::SHUTTING_DOWN, 0);
    assert_eq!(error.dst, NIL);
    unregistered.expect_closed();

    let status = gw.wait_exit(SHUTDOWN_TIMEOUT.saturating_sub(signalled.elapsed()));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert_refused(tcp_listen);
    assert_refused(ws_listen);
    assert_eq!(
        gw.extra_stdout(),
        Vec::<String>::new(),
        "stdout after the ready line"
    );
}

#[test]
fn sigint_shuts_down_gracefully_too() {
    let mut gw = Gateway::start("[runtime]\nshards = 3");
    let me = Uuid::new_v4();
    let mut client = TcpClient::hello(gw.tcp_addr(), me);
    gw.signal(libc::SIGINT);
    client.expect_error_then_close(code::SHUTTING_DOWN, 0);
    let status = gw.wait_exit(SHUTDOWN_TIMEOUT);
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert_refused(gw.tcp_addr());
}

#[test]
fn idle_gateway_exits_zero_on_sigterm() {
    let mut gw = Gateway::start("");
    gw.signal(libc::SIGTERM);
    let status = gw.wait_exit(SHUTDOWN_TIMEOUT);
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert_refused(gw.tcp_addr());
    assert_refused(gw.ws_addr());
}
