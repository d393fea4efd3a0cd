//! The web console in a real browser: headless Chromium opens `GET /` on the
//! gateway's WebSocket port, next to a simulated controller
//! (`examples/controller.rs`), and the test checks what a user would see:
//! the controller going online, its state, a command and its reply, the
//! controller going offline and a plainly shown `dst_offline`, and the page
//! reconnecting by itself after the gateway restarts; and, over TLS with
//! tokens on, the page asking for one. Chromium is driven over DevTools
//! (`console/cdp.rs`); the tests fail when it is not installed.
//!
//! A screenshot is saved to `target/console-e2e.png` (and one taken while
//! the controller is online to `target/console-e2e-online.png`).

#[path = "console/cdp.rs"]
mod cdp;
mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use cdp::{Browser, Tail};
use common::tls::TestCert;
use common::Gateway;
use uuid::Uuid;

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 1000;

/// The profile directory of this build (`target/debug`), where the gateway
/// binary and the examples are.
fn profile_dir() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_gateway"))
        .parent()
        .expect("the gateway binary is in a directory")
}

/// Builds the simulator example (a no-op when `cargo test` already built
/// it; `cargo test --test console` alone does not build examples) and
/// returns its path.
fn controller_example() -> PathBuf {
    let dir = profile_dir();
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(name) => name,
        None => panic!("profile directory {}", dir.display()),
    };
    let mut cargo = Command::new(env!("CARGO"));
    // Without the variables cargo set for this test, so the build sees what
    // `cargo test` saw (they would otherwise change the fingerprints and
    // rebuild the library).
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_EXE_"]
            .iter()
            .any(|prefix| key.starts_with(prefix))
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
            ]
            .contains(&key.as_ref())
        {
            cargo.env_remove(key.as_ref());
        }
    }
    cargo
        .args(["build", "--quiet", "--example", "controller"])
        .args(["--profile", profile])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", dir.parent().expect("target directory"));
    run_ok(&mut cargo, "cargo build --example controller");
    dir.join("examples").join("controller")
}

/// Runs `command` to its end and fails the test unless it succeeds;
/// returns its standard output.
fn run_ok(command: &mut Command, what: &str) -> String {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// One simulated controller process; dropping it kills it, which closes
/// its connection the way a device losing power would (the kernel closes
/// the socket).
struct Simulator {
    child: Child,
    tail: Tail,
}

impl Simulator {
    fn start(exe: &Path, gateway: SocketAddr, code: Uuid, token: Option<&str>) -> Simulator {
        let mut command = Command::new(exe);
        if let Some(token) = token {
            command.arg("--token").arg(token);
        }
        let mut child = command
            .arg("--gateway")
            .arg(gateway.to_string())
            .arg("--code")
            .arg(code.to_string())
            .args(["--state-every-s", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", exe.display()));
        let (tx, rx) = mpsc::channel();
        Tail::follow(child.stdout.take().expect("piped stdout"), move |line| {
            let _ = tx.send(line.to_string());
        });
        let tail = Tail::follow(child.stderr.take().expect("piped stderr"), |_| {});
        let mut sim = Simulator { child, tail };
        let first = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the simulator prints its code");
        assert_eq!(first, format!("controller {code}"));
        sim.assert_running();
        sim
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait simulator") {
            panic!("the simulator exited: {status}");
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("---- simulator stderr ----\n{}", self.tail.text());
        }
    }
}

/// A JavaScript expression: the text of the element `selector`, or ''.
fn text_of(selector: &str) -> String {
    format!(
        "((document.querySelector({}) || {{}}).textContent || '')",
        serde_json::json!(selector)
    )
}

/// Waits for the connection status pill to read `state`.
fn wait_status(page: &mut Browser, what: &str, state: &str) {
    page.wait_for(
        what,
        &format!("document.getElementById('conn-status').dataset.state === '{state}'"),
    );
}

/// Enters `code` as the controller to watch.
fn watch(page: &mut Browser, code: Uuid) {
    page.type_into("#code", &code.to_string());
    page.click("#watch");
}

/// Waits for the controller to be shown online (`true`) or offline.
fn wait_presence(page: &mut Browser, online: bool) {
    page.wait_for(
        &format!(
            "the controller shown {}",
            if online { "online" } else { "offline" }
        ),
        &format!("document.getElementById('presence').dataset.online === '{online}'"),
    );
}

/// Waits for the newest reply to be a success (`ok`) or an `error` whose
/// text satisfies `test` (a JavaScript method call on the text).
fn wait_reply(page: &mut Browser, class: &str, test: &str) {
    page.wait_for(
        &format!("a reply: {class} {test}"),
        &format!(
            "{}.{test}",
            text_of(&format!("#replies li:last-child .result.{class}"))
        ),
    );
}

/// Waits for the state shown for `key` to be `value`.
fn wait_state(page: &mut Browser, key: &str, value: &str) {
    page.wait_for(
        &format!("state {key} = {value}"),
        &format!(
            "{} === '{value}'",
            text_of(&format!("#state [data-key='{key}']"))
        ),
    );
}

fn elapsed(started: Instant, what: &str) {
    println!("{:5.1} s: {what}", started.elapsed().as_secs_f64());
}

#[test]
fn console_shows_a_controller_live_talks_to_it_and_reconnects() {
    let started = Instant::now();
    let simulator = controller_example();
    let gw = Gateway::start("");
    let ws_addr = gw.ws_addr();
    let mut page = Browser::launch(WIDTH, HEIGHT);
    elapsed(started, "gateway and browser started");

    page.navigate(&format!("http://{ws_addr}/"));
    wait_status(&mut page, "the page to register", "connected");
    let me = page.eval(&text_of("#my-id"));
    assert!(
        Uuid::parse_str(me.as_str().unwrap_or_default()).is_ok(),
        "the page shows its own address: {me}"
    );
    page.wait_for(
        "the clock offset",
        &format!("{}.endsWith(' ms')", text_of("#clock-offset")),
    );

    // Watch a controller that has never connected.
    let code = Uuid::new_v4();
    watch(&mut page, code);
    wait_presence(&mut page, false);
    page.wait_for(
        "no stored state",
        &format!("{} === 'no state stored yet'", text_of("#state-meta")),
    );

    // It comes online and stores its state.
    let sim = Simulator::start(&simulator, gw.tcp_addr(), code, None);
    wait_presence(&mut page, true);
    wait_state(&mut page, "relay1", "false");
    page.wait_for(
        "when the state was stored",
        &format!("{}.startsWith('stored ')", text_of("#state-meta")),
    );

    // A command, its reply, and the new state.
    page.type_into("#command", r#"{"set":"relay1","on":true}"#);
    page.click("#send");
    wait_reply(
        &mut page,
        "ok",
        r#"startsWith('{"ok":true,"relay1":true}')"#,
    );
    wait_state(&mut page, "relay1", "true");
    page.click(r#"[data-command='{"get":"state"}']"#);
    wait_reply(&mut page, "ok", r#"includes('"relay1":true')"#);
    let target = profile_dir().parent().expect("target directory");
    page.screenshot(&target.join("console-e2e-online.png"));
    elapsed(started, "online, state, command and reply shown");

    // It goes away; a command to it now fails, and the page says why.
    drop(sim);
    wait_presence(&mut page, false);
    page.click("#send");
    wait_reply(&mut page, "error", "startsWith('dst_offline')");
    page.wait_for(
        "the error in the frame log",
        "[...document.querySelectorAll('#log li.error')].some(e => e.textContent.includes('dst_offline'))",
    );
    let screenshot = target.join("console-e2e.png");
    page.screenshot(&screenshot);
    println!("console screenshot: {}", screenshot.display());
    let problems = page.take_problems();
    assert!(
        problems.is_empty(),
        "the page logged errors (a CSP violation would be one): {problems:#?}"
    );
    elapsed(started, "offline and dst_offline shown");

    // The Content-Security-Policy is in force: an injected inline script
    // does not run, and the violation is reported, so the check above
    // would have seen one.
    let ran = page.eval(
        "(() => { const s = document.createElement('script'); \
         s.textContent = 'window.inlineRan = true'; document.body.append(s); \
         return window.inlineRan === true; })()",
    );
    assert_eq!(ran, serde_json::json!(false), "inline script ran");
    let problems = page.take_problems();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("Content Security Policy")),
        "no CSP violation reported: {problems:#?}"
    );

    // The gateway restarts on the same port; the page reconnects and
    // watches the controller again.
    let subscribes = "document.querySelectorAll('#log li.out[data-kind=\"subscribe\"]').length";
    let before = page.eval(subscribes).as_u64().expect("a count");
    drop(gw);
    page.wait_for(
        "the page to notice the gateway is gone",
        "document.getElementById('conn-status').dataset.state !== 'connected'",
    );
    let _gw = Gateway::start(&format!("[listen]\nws = [\"{ws_addr}\"]"));
    wait_status(&mut page, "the page to reconnect", "connected");
    page.wait_for(
        "the controller watched again",
        &format!(
            "{subscribes} > {before} && {}.includes('not seen')",
            text_of("#presence-since")
        ),
    );
    elapsed(started, "reconnected after the gateway restarted");
}

/// The signing key of the authentication test.
const KEY: (&str, &str) = ("console", "console-test-secret-0123456789abcdef");

/// Mints a token with `gateway token --config <config> <args>`.
fn mint(config: &Path, args: &[&str]) -> String {
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_gateway"));
    gateway.arg("token").arg("--config").arg(config).args(args);
    run_ok(&mut gateway, &format!("gateway token {args:?}"))
        .trim()
        .to_string()
}

/// Tokens on, and the page loaded over TLS from the WSS port, so it must
/// open its WebSocket with `wss:` (Chrome refuses `ws:` from an https page).
#[test]
fn console_over_tls_asks_for_a_token_when_auth_is_on() {
    let started = Instant::now();
    let simulator = controller_example();
    let auth = format!(
        "[auth]\nmode = \"jwt\"\nkeys = [{{ kid = {:?}, secret = {:?} }}]",
        KEY.0, KEY.1
    );
    let config = std::env::temp_dir().join(format!(
        "uring-gateway-console-auth-{}.toml",
        std::process::id()
    ));
    fs::write(&config, &auth).expect("write the token config");
    let code = Uuid::new_v4();
    let code_s = code.to_string();
    let page_token = mint(&config, &["--allow", &code_s, "--ttl", "10m"]);
    // A device answers pages, whose addresses are random: it needs `*`.
    let device_token = mint(&config, &["--sub", &code_s, "--allow", "*", "--ttl", "10m"]);
    let _ = fs::remove_file(&config);

    let cert = TestCert::new();
    let gw = Gateway::start(&format!("{auth}\n{}", cert.gateway_config()));
    let _sim = Simulator::start(&simulator, gw.tcp_addr(), code, Some(&device_token));
    let mut page = Browser::launch(WIDTH, HEIGHT);
    page.navigate(&format!("https://127.0.0.1:{}/", gw.wss[0].port()));
    assert_eq!(page.eval("location.protocol"), serde_json::json!("https:"));
    wait_status(&mut page, "the page to ask for a token", "auth");
    page.wait_for(
        "the token form",
        "!document.getElementById('auth-box').hidden",
    );
    page.type_into("#token", &page_token);
    page.click("#token-connect");
    wait_status(
        &mut page,
        "the page to register with its token",
        "connected",
    );
    page.wait_for(
        "the token form to go away",
        "document.getElementById('auth-box').hidden",
    );

    // An address the token does not allow, then the one it does.
    watch(&mut page, Uuid::new_v4());
    page.wait_for(
        "forbidden shown",
        &format!("{} === 'forbidden'", text_of("#presence")),
    );
    watch(&mut page, code);
    wait_presence(&mut page, true);
    wait_state(&mut page, "relay2", "false");
    page.click(r#"[data-command='{"set":"relay2","on":true}']"#);
    wait_reply(
        &mut page,
        "ok",
        r#"startsWith('{"ok":true,"relay2":true}')"#,
    );
    wait_state(&mut page, "relay2", "true");
    let problems = page.take_problems();
    assert!(problems.is_empty(), "the page logged errors: {problems:#?}");
    elapsed(started, "token asked for, accepted, commands allowed");
}
